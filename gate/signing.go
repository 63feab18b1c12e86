package gate

import (
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/keygate/keygate/keys"
)

// Signed requests (the gw3 HMAC scheme): X-Access-Key names the key,
// X-Access-Signature is BASE64(HMAC-SHA256(string_to_sign, secret)) and the
// ts query parameter (Unix seconds) must lie within Options.TSSkew of now.
//
//	string_to_sign = METHOD + "\n" + path + "\n" + params
//
// METHOD is upper case; path is the path as sent, percent-encoding kept;
// params is every query parameter as key=value, key and value each encoded
// with url.QueryEscape (application/x-www-form-urlencoded: space → "+"),
// sorted by key then value (byte order of the decoded strings), joined with
// "&"; empty when there is none. ts is one of the parameters, so it is
// signed. A signature is accepted once: it is the nonce of the request's
// charge, remembered by the counter store until ts + skew.

// nonceMargin keeps a used signature remembered a little past the end of
// its ts window, so clock differences between sidecars and the store do not
// reopen it.
const nonceMargin = 5 * time.Second

// StringToSign returns the string a signed request's signature covers:
// METHOD "\n" path "\n" params, as described above. path must be the
// escaped path as sent (URL.EscapedPath for a request built in Go).
func StringToSign(method, path string, query url.Values) string {
	type pair struct{ k, v string }
	pairs := make([]pair, 0, len(query))
	for k, vs := range query {
		for _, v := range vs {
			pairs = append(pairs, pair{k, v})
		}
	}
	slices.SortFunc(pairs, func(a, b pair) int {
		return cmp.Or(strings.Compare(a.k, b.k), strings.Compare(a.v, b.v))
	})
	var b strings.Builder
	b.WriteString(strings.ToUpper(method))
	b.WriteByte('\n')
	b.WriteString(path)
	b.WriteByte('\n')
	for i, p := range pairs {
		if i > 0 {
			b.WriteByte('&')
		}
		b.WriteString(url.QueryEscape(p.k))
		b.WriteByte('=')
		b.WriteString(url.QueryEscape(p.v))
	}
	return b.String()
}

// SignRequest returns the X-Access-Signature of a request:
// BASE64(HMAC-SHA256(StringToSign(method, path, query), secret)). The
// caller adds ts to query first.
func SignRequest(method, path string, query url.Values, secret string) string {
	return base64.StdEncoding.EncodeToString(signatureMAC(StringToSign(method, path, query), []byte(secret)))
}

// Sign signs r in place for the key accessKey/secret: it adds ts (now, in
// Unix seconds) to the query unless present, then sets X-Access-Key and
// X-Access-Signature. The signed path is r.URL.EscapedPath(), what Go's
// client sends.
func Sign(r *http.Request, accessKey, secret string, now time.Time) error {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return fmt.Errorf("parsing query: %w", err)
	}
	if !q.Has("ts") {
		ts := "ts=" + strconv.FormatInt(now.Unix(), 10)
		if r.URL.RawQuery == "" {
			r.URL.RawQuery = ts
		} else {
			r.URL.RawQuery += "&" + ts
		}
		q.Set("ts", strconv.FormatInt(now.Unix(), 10))
	}
	path := r.URL.EscapedPath()
	if path == "" {
		path = "/"
	}
	r.Header.Set(HeaderAccessKey, accessKey)
	r.Header.Set(HeaderAccessSignature, SignRequest(r.Method, path, q, secret))
	return nil
}

func signatureMAC(stringToSign string, secret []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(stringToSign))
	return m.Sum(nil)
}

// signedRequest is what verifying a signed request needs, parsed from it
// without any lookup.
type signedRequest struct {
	stringToSign string
	// mac is the presented signature decoded; nil when it is not base64,
	// which then matches nothing.
	mac []byte
	ts  time.Time
}

// parseSigned checks ts and builds the string to sign of a signed request
// from its method, its path as sent, its raw query and its signature
// header. It is pure and fuzzed. Errors: *TSError (401) for a missing or bad
// ts, a bad request for an unparseable query.
func parseSigned(method, path, rawQuery, signature string, now time.Time, skew time.Duration) (signedRequest, error) {
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return signedRequest{}, BadRequest("malformed query string: signed requests need a well-formed query")
	}
	ts, err := CheckTS(q, now, skew)
	if err != nil {
		return signedRequest{}, err
	}
	return signedRequest{stringToSign: StringToSign(method, path, q), mac: decodeSignature(signature), ts: ts}, nil
}

// decodeSignature decodes standard base64, padded or not; nil when it is
// neither.
func decodeSignature(s string) []byte {
	if b, err := base64.StdEncoding.DecodeString(s); err == nil {
		return b
	}
	if b, err := base64.RawStdEncoding.DecodeString(s); err == nil {
		return b
	}
	return nil
}

// verify reports whether the signature matches secret, in constant time.
func (s signedRequest) verify(secret []byte) bool {
	return len(s.mac) == sha256.Size && hmac.Equal(s.mac, signatureMAC(s.stringToSign, secret))
}

// nonce is the one-time token of a verified signed request: the decoded
// signature (so padded and unpadded forms of one signature are the same
// nonce), used once until ts + skew.
func (s signedRequest) nonce(skew time.Duration) signedNonce {
	return signedNonce{value: base64.RawURLEncoding.EncodeToString(s.mac), until: s.ts.Add(skew + nonceMargin)}
}

// signedNonce is spent by the request's charge; the zero value is none.
type signedNonce struct {
	value string
	until time.Time
}

// RequestPath is the path of r as the client sent it, percent-encoding
// kept: the request target up to the query.
func RequestPath(r *http.Request) string {
	if u := r.RequestURI; strings.HasPrefix(u, "/") {
		if i := strings.IndexByte(u, '?'); i >= 0 {
			u = u[:i]
		}
		return u
	}
	if p := r.URL.EscapedPath(); p != "" {
		return p
	}
	return "/"
}

// verifySigned authenticates a signed request: ts, then the key and its
// secret (cached), then the signature. It returns the nonce the caller must
// spend before acting on the request.
func (d *Decider) verifySigned(ctx context.Context, req *Request, c Credential) (keys.Principal, signedNonce, error) {
	sr, err := parseSigned(req.Method, req.RawPath, req.RawQuery, c.Signature, d.opt.Now(), d.opt.TSSkew)
	if err != nil {
		return keys.Principal{}, signedNonce{}, err
	}
	p, err := d.opt.Auth.AuthenticateSigned(ctx, c.AccessKey, sr.verify)
	if err != nil {
		return keys.Principal{}, signedNonce{}, err
	}
	return p, sr.nonce(d.opt.TSSkew), nil
}
