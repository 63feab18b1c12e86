package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	kgate "github.com/keygate/keygate/gate"
	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/keys/redisstore"
)

// Environment variables of `keygate sign`. The secret is read from the
// environment (or a file), never from the command line, where other users
// of the machine could read it.
const (
	envSignAccessKey = "KEYGATE_SIGN_ACCESS_KEY"
	envSignSecret    = "KEYGATE_SIGN_SECRET"
)

const signUsage = `usage: keygate sign [flags] -url URL

Prints the headers of a signed request (gw3 HMAC) and the URL to send it to,
with ts=<now> added unless the URL has a ts already.

The access key comes from -access-key or $KEYGATE_SIGN_ACCESS_KEY; the secret
from $KEYGATE_SIGN_SECRET, or from -secret-file (a file, "-" for stdin).

flags:
`

// runSign is `keygate sign`.
func runSign(args []string, env map[string]string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("sign", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, signUsage)
		fs.PrintDefaults()
	}
	method := fs.String("method", "GET", "HTTP method")
	rawURL := fs.String("url", "", "request URL: http://host/path?query, or /path?query")
	accessKey := fs.String("access-key", env[envSignAccessKey], "access key (default $"+envSignAccessKey+")")
	secretFile := fs.String("secret-file", "", `read the secret from this file ("-" = stdin) instead of $`+envSignSecret)
	tsFlag := fs.Int64("ts", 0, "ts to add when the URL has none, Unix seconds (default now)")
	verbose := fs.Bool("v", false, "also print the string to sign to stderr")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("sign: unexpected argument %q (see keygate sign -h)", fs.Arg(0))
	}
	if *rawURL == "" {
		return errors.New("sign: -url is required")
	}
	if *accessKey == "" {
		return errors.New("sign: no access key: set " + envSignAccessKey + " or pass -access-key")
	}
	secret, err := readSignSecret(*secretFile, env)
	if err != nil {
		return err
	}
	if !keys.CheckSecret(secret) {
		fmt.Fprintln(stderr, "keygate sign: warning: the secret does not look like a keygate secret (kg_…); signing anyway")
	}
	u, err := url.Parse(*rawURL)
	if err != nil {
		return fmt.Errorf("sign: -url: %w", err)
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return fmt.Errorf("sign: -url query: %w", err)
	}
	if !q.Has("ts") {
		ts := *tsFlag
		if ts == 0 {
			ts = time.Now().Unix()
		}
		s := strconv.FormatInt(ts, 10)
		q.Set("ts", s)
		if u.RawQuery != "" {
			u.RawQuery += "&"
		}
		u.RawQuery += "ts=" + s
	}
	if !wireSafeQuery(u.RawQuery) {
		// A query typed unencoded (a space, é, a quote) is not something
		// curl or an HTTP client can send as it is: print it encoded. The
		// signature covers the decoded parameters, so it is unchanged.
		u.RawQuery = q.Encode()
	}
	path := u.EscapedPath()
	if path == "" {
		path = "/"
		u.Path = "/"
	}
	m := strings.ToUpper(*method)
	if *verbose {
		fmt.Fprintf(stderr, "string_to_sign: %q\n", kgate.StringToSign(m, path, q))
	}
	fmt.Fprintf(stdout, "X-Access-Key: %s\n", *accessKey)
	fmt.Fprintf(stdout, "X-Access-Signature: %s\n", kgate.SignRequest(m, path, q, secret))
	fmt.Fprintf(stdout, "URL: %s\n", u.String())
	return nil
}

// wireSafeQuery reports whether a raw query holds only what may appear
// unencoded in a URL's query (RFC 3986: unreserved, sub-delims, ":", "@", "/",
// "?" and percent-escapes, which url.ParseQuery has already checked).
func wireSafeQuery(raw string) bool {
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("-._~!$&'()*+,;=:@/?%", c) >= 0:
		default:
			return false
		}
	}
	return true
}

func readSignSecret(file string, env map[string]string) (string, error) {
	if file == "" {
		s := strings.TrimSpace(env[envSignSecret])
		if s == "" {
			return "", errors.New("sign: no secret: set " + envSignSecret + " or pass -secret-file")
		}
		return s, nil
	}
	var r io.Reader = os.Stdin
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return "", fmt.Errorf("sign: %w", err)
		}
		defer f.Close()
		r = f
	}
	line, err := bufio.NewReader(io.LimitReader(r, 4096)).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("sign: reading secret: %w", err)
	}
	if line = strings.TrimSpace(line); line == "" {
		return "", errors.New("sign: the secret file is empty")
	}
	return line, nil
}

const rekeyUsage = `usage: keygate rekey [-dry-run]

Re-encrypts every stored signing secret sealed under KEYGATE_SECRET_KEY_PREVIOUS
with KEYGATE_SECRET_KEY. Reads the same KEYGATE_* configuration as serve
(KEYGATE_REDIS_URL, KEYGATE_SECRET_KEY, KEYGATE_SECRET_KEY_PREVIOUS;
KEYGATE_UPSTREAM_URL is not needed). Run it once every sidecar runs with the
new key as KEYGATE_SECRET_KEY and the old one as KEYGATE_SECRET_KEY_PREVIOUS.

flags:
`

// rekeyStats is the summary of a rekey run.
type rekeyStats struct {
	resealed, current, unsealed, failed int
}

// runRekey is `keygate rekey`.
func runRekey(ctx context.Context, args []string, env map[string]string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("rekey", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, rekeyUsage)
		fs.PrintDefaults()
	}
	dryRun := fs.Bool("dry-run", false, "count what would be re-encrypted, change nothing")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("rekey: unexpected argument %q", fs.Arg(0))
	}
	if env[envPrefix+"UPSTREAM_URL"] == "" {
		// rekey never talks to the upstream; let the rest of the
		// configuration be validated as serve would.
		env = mergeMaps(env, map[string]string{envPrefix + "UPSTREAM_URL": "http://upstream.invalid"})
	}
	cfg, err := loadConfig(env)
	if err != nil {
		return err
	}
	if cfg.RedisURL == "" {
		return errors.New("rekey: KEYGATE_REDIS_URL is empty: the embedded in-memory store lives and dies " +
			"inside each `keygate serve` process, so there is nothing stored to re-encrypt")
	}
	sealer, err := newSealer(cfg)
	if err != nil {
		return err
	}
	if sealer == nil {
		return errors.New("rekey: KEYGATE_SECRET_KEY is empty: set the new key (and the old one as KEYGATE_SECRET_KEY_PREVIOUS)")
	}
	rdb, err := newRedisClient(cfg.RedisURL, max(cfg.RedisTimeout, 5*time.Second))
	if err != nil {
		return err
	}
	defer rdb.Close()
	st, err := rekey(ctx, redisstore.New(rdb), sealer, *dryRun, stderr)
	verb := "re-encrypted"
	if *dryRun {
		verb = "to re-encrypt"
	}
	fmt.Fprintf(stdout, "rekey: %d %s under key id %s, %d already under it, %d without a sealed secret (created while signing was off), %d failed\n",
		st.resealed, verb, sealer.CurrentID(), st.current, st.unsealed, st.failed)
	if err != nil {
		return err
	}
	if st.failed > 0 {
		return fmt.Errorf("rekey: %d keys could not be re-encrypted (see above)", st.failed)
	}
	return nil
}

// rekey walks every key of every organization and re-seals under the
// current key what was sealed under another. Per-key problems are reported on
// report and counted; a store failure stops the walk.
func rekey(ctx context.Context, store keys.Store, sealer *keys.Sealer, dryRun bool, report io.Writer) (rekeyStats, error) {
	var st rekeyStats
	orgs, err := store.Orgs(ctx)
	if err != nil {
		return st, fmt.Errorf("rekey: listing organizations: %w", err)
	}
	for _, o := range orgs {
		ks, err := store.Keys(ctx, o.ID)
		if err != nil {
			return st, fmt.Errorf("rekey: listing keys of org %s: %w", o.ID, err)
		}
		for _, k := range ks {
			if len(k.SealedSecret) == 0 {
				st.unsealed++
				continue
			}
			if id, ok := keys.SealedKeyID(k.SealedSecret); ok && id == sealer.CurrentID() {
				st.current++
				continue
			}
			if err := reseal(ctx, store, sealer, k, dryRun); err != nil {
				if errors.Is(err, keys.ErrUnavailable) {
					return st, fmt.Errorf("rekey: %w", err)
				}
				st.failed++
				fmt.Fprintf(report, "rekey: org %s key %s (%s): %v\n", o.ID, k.UID, k.Name, err)
				continue
			}
			st.resealed++
		}
	}
	return st, nil
}

// reseal opens k's secret and stores it sealed under the current key. A key
// changed concurrently is read again and retried; a key deleted meanwhile
// needs nothing.
func reseal(ctx context.Context, store keys.Store, sealer *keys.Sealer, k keys.Key, dryRun bool) error {
	for attempt := 0; ; attempt++ {
		secret, err := sealer.Open(k)
		if err != nil {
			return err
		}
		sealed, err := sealer.Seal(k, string(secret))
		clear(secret)
		if err != nil || dryRun {
			return err
		}
		err = store.SetSealedSecret(ctx, k.UID, sealed)
		switch {
		case err == nil, errors.Is(err, keys.ErrNotFound):
			return nil
		case errors.Is(err, keys.ErrConflict) && attempt < 3:
			if k, err = store.KeyByUID(ctx, k.UID); err != nil {
				if errors.Is(err, keys.ErrNotFound) {
					return nil
				}
				return err
			}
			if id, ok := keys.SealedKeyID(k.SealedSecret); ok && id == sealer.CurrentID() {
				return nil
			}
		default:
			return err
		}
	}
}

func mergeMaps(a, b map[string]string) map[string]string {
	out := make(map[string]string, len(a)+len(b))
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}
