package admincli

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"strings"
	"unicode/utf8"
)

// invocation is a parsed command line: the request to send, and how.
type invocation struct {
	cmd  *command
	args []string
	// method and path (escaped, without the base URL's path) of the
	// request; body is nil for none.
	method, path string
	body         []byte
	base         *url.URL
	token        string
	json         bool
	g            *globals
	// maxResponse bounds the answer (MaxResponse).
	maxResponse int64
}

// parse reads a command's arguments and flags and builds its request. It
// sends nothing; every problem is a usage error (exit 2), except a bad URL
// (3) and a missing token (4).
func parse(c *command, g *globals, argv []string, o IO) (*invocation, error) {
	fs := flag.NewFlagSet(c.name(), flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	g.register(fs)
	bf := newBodyFlags(fs, c.fields)
	var file string
	if c.file {
		fs.StringVar(&file, "f", "", "body file")
	}
	pos, err := parseInterspersed(fs, argv)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, usageErr(c.shortUsage(), "%s: %v", c.name(), err)
	}
	switch {
	case len(pos) < len(c.args):
		return nil, usageErr(c.shortUsage(), "%s: missing %s", c.name(), strings.ToUpper(c.args[len(pos)]))
	case len(pos) > len(c.args):
		return nil, usageErr(c.shortUsage(), "%s: unexpected argument %q", c.name(), pos[len(c.args)])
	}
	for i, a := range pos {
		if err := checkArg(a); err != nil {
			return nil, usageErr(c.shortUsage(), "%s: %s: %v", c.name(), strings.ToUpper(c.args[i]), err)
		}
	}
	inv := &invocation{cmd: c, args: pos, method: c.method, g: g, maxResponse: MaxResponse}
	switch g.output {
	case "table":
	case "json":
		inv.json = true
	default:
		return nil, usageErr(c.shortUsage(), "%s: -o %q: want table or json", c.name(), g.output)
	}
	if g.timeout <= 0 {
		return nil, usageErr(c.shortUsage(), "%s: --timeout must be positive", c.name())
	}
	if readers := stdinReaders(file, g, bf); len(readers) > 1 {
		return nil, usageErr(c.shortUsage(), "%s: %s cannot all read stdin (-)", c.name(), strings.Join(readers, ", "))
	}
	if inv.path, err = fillRoute(c, pos); err != nil {
		return nil, usageErr(c.shortUsage(), "%s: %v", c.name(), err)
	}
	if inv.body, err = buildBody(c, bf, file, pos, o); err != nil {
		return nil, usageErr(c.shortUsage(), "%s: %v", c.name(), err)
	}
	if inv.base, err = baseURL(g, g.env); err != nil {
		return nil, &exitError{code: ExitUnreachable, msg: err.Error()}
	}
	if !c.noToken {
		if inv.token, err = adminToken(g, o); err != nil {
			return nil, err
		}
	}
	return inv, nil
}

// stdinReaders names the flags that would read stdin: at most one may.
func stdinReaders(file string, g *globals, bf *bodyFlags) []string {
	var out []string
	if file == "-" {
		out = append(out, "-f")
	}
	if g.tokenFile == "-" {
		out = append(out, "--token-file")
	}
	for _, v := range bf.set() {
		if v.f.kind == kSecretFile && strings.Join(v.vals, ",") == "-" {
			out = append(out, "--"+v.f.flag)
		}
	}
	return out
}

// parseInterspersed parses flags wherever they are among the positional
// arguments (flag stops at the first one); "--" ends the flags.
func parseInterspersed(fs *flag.FlagSet, argv []string) ([]string, error) {
	var pos []string
	for range len(argv) + 1 {
		if err := fs.Parse(argv); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if n := len(argv) - len(rest); n > 0 && argv[n-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		argv = rest[1:]
	}
	return pos, nil
}

// checkArg refuses an id or name that cannot name anything.
func checkArg(a string) error {
	switch {
	case a == "":
		return errors.New("must not be empty")
	case len(a) > maxArg:
		return fmt.Errorf("longer than %d bytes", maxArg)
	case !utf8.ValidString(a):
		return errors.New("not valid UTF-8")
	case a == "." || a == "..":
		return errors.New("cannot be \"..\" or \".\" (a path segment)")
	}
	return nil
}

// fillRoute puts the positional arguments into the route's placeholders,
// escaped.
func fillRoute(c *command, pos []string) (string, error) {
	path := c.route
	for i := 0; strings.Contains(path, "{"); i++ {
		start := strings.Index(path, "{")
		end := strings.Index(path[start:], "}")
		if end < 0 || i >= len(pos) {
			return "", fmt.Errorf("route %s: not enough arguments", c.route)
		}
		path = path[:start] + url.PathEscape(pos[i]) + path[start+end+1:]
	}
	return path, nil
}

// buildBody makes the request body: the -f object, then the fixed fields,
// the key name and the flags given, each overriding what came before.
func buildBody(c *command, bf *bodyFlags, file string, pos []string, o IO) ([]byte, error) {
	if len(c.fields) == 0 && c.fixed == nil && !c.file && !c.bodyName {
		return nil, nil
	}
	obj := map[string]json.RawMessage{}
	if file != "" {
		var err error
		if obj, err = readBodyFile(file, o); err != nil {
			return nil, err
		}
	}
	for k, v := range c.fixed {
		b, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		obj[k] = b
	}
	if c.bodyName {
		b, err := json.Marshal(pos[len(pos)-1])
		if err != nil {
			return nil, err
		}
		obj["name"] = b
	}
	for _, v := range bf.set() {
		text := strings.Join(v.vals, ",")
		if v.f.kind == kSecretFile {
			s, err := readSecretFile(text, o)
			if err != nil {
				return nil, fmt.Errorf("--%s: %w", v.f.flag, err)
			}
			text = s
		}
		b, err := convert(v.f.kind, text, o.Now())
		if err != nil {
			return nil, fmt.Errorf("--%s: %w", v.f.flag, err)
		}
		obj[v.f.json] = b
	}
	if c.needChange && len(obj) == 0 {
		return nil, errors.New("nothing to change: give at least one flag, or -f")
	}
	return json.Marshal(obj)
}

// baseURL is the operator API's base: --url, $KEYGATE_ADMIN_URL or the
// default. A bare host:port means http.
func baseURL(g *globals, env map[string]string) (*url.URL, error) {
	raw, from := g.url, "--url"
	if raw == "" {
		raw, from = strings.TrimSpace(env[EnvURL]), "$"+EnvURL
	}
	if raw == "" {
		raw, from = DefaultURL, "the default URL"
	}
	if !strings.Contains(raw, "://") {
		raw = "http://" + raw
	}
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return nil, fmt.Errorf("%s is not a URL: %v", from, stripURLError(err))
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("%s: want an http:// or https:// URL, not %s://", from, u.Scheme)
	case u.Host == "":
		return nil, fmt.Errorf("%s: no host", from)
	case u.User != nil:
		return nil, fmt.Errorf("%s: no user or password in the URL (the token goes in $%s)", from, EnvToken)
	case u.RawQuery != "" || u.Fragment != "":
		return nil, fmt.Errorf("%s: no query or fragment, just scheme://host:port[/prefix]", from)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.RawPath = ""
	return u, nil
}

// stripURLError keeps url.Parse's reason, not the URL it quotes (which
// could hold a password).
func stripURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// adminToken is the token from --token-file or $KEYGATE_ADMIN_TOKEN.
func adminToken(g *globals, o IO) (string, error) {
	tok := strings.TrimSpace(g.env[EnvToken])
	from := "$" + EnvToken
	if g.tokenFile != "" {
		s, err := readSecretFile(g.tokenFile, o)
		if err != nil {
			return "", &exitError{code: ExitUnauthorized, msg: "--token-file: " + err.Error()}
		}
		tok, from = s, "--token-file"
	}
	if tok == "" {
		return "", &exitError{code: ExitUnauthorized, msg: "no admin token: set " + EnvToken +
			" to the KEYGATE_ADMIN_TOKEN of the keygate you manage, or pass --token-file"}
	}
	for i := 0; i < len(tok); i++ {
		if tok[i] < 0x21 || tok[i] > 0x7e {
			return "", &exitError{code: ExitUnauthorized, msg: from + " holds a character a token cannot (a space or a control character)"}
		}
	}
	return tok, nil
}
