package admincli

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// execute sends the request and shows the answer.
func execute(ctx context.Context, inv *invocation, o IO) error {
	status, raw, err := send(ctx, inv)
	if err != nil {
		return err
	}
	if status == http.StatusUnauthorized {
		return &exitError{code: ExitUnauthorized, msg: fmt.Sprintf("%s: %s (%s); set %s to the sidecar's KEYGATE_ADMIN_TOKEN, or pass --token-file",
			statusLine(status), apiMessage(raw), inv.where(), EnvToken)}
	}
	if status < 200 || status > 299 {
		msg := apiMessage(raw)
		if msg == "" {
			return &exitError{code: ExitUnreachable, msg: fmt.Sprintf("%s answered %s with no operator API error (%s): is %s keygate's admin listener?",
				inv.base.Redacted(), statusLine(status), inv.where(), EnvURL)}
		}
		if status == http.StatusForbidden {
			// The operator API never answers 403; the data listener
			// does, to a request without an API key.
			return &exitError{code: ExitUnreachable, msg: fmt.Sprintf("%s: %s (%s): %s is not the operator API; is it the data listener instead of the admin listener (KEYGATE_ADMIN_ADDR)?",
				statusLine(status), msg, inv.where(), inv.base.Redacted())}
		}
		return &exitError{code: ExitRefused, msg: fmt.Sprintf("%s: %s (%s)", statusLine(status), msg, inv.where())}
	}
	if status != http.StatusNoContent && !json.Valid(raw) {
		return &exitError{code: ExitUnreachable, msg: fmt.Sprintf("%s answered %s with something other than JSON (%s): is %s keygate's admin listener?",
			inv.base.Redacted(), statusLine(status), inv.where(), EnvURL)}
	}
	if inv.cmd.pick != nil {
		elem, ok, err := inv.cmd.pick(raw, inv.args[0])
		if err != nil {
			return notOperatorAPI(inv, err)
		}
		if !ok {
			return &exitError{code: ExitRefused, msg: fmt.Sprintf("404 Not Found: no %s %s (%s)", strings.TrimSuffix(inv.cmd.resource, "s"), inv.args[0], inv.where())}
		}
		raw = elem
	}
	if inv.json {
		if len(raw) > 0 {
			_, err = o.Stdout.Write(append(bytes.TrimRight(raw, "\n"), '\n'))
		}
		return err
	}
	if err := inv.cmd.show(o.Stdout, inv, raw); err != nil {
		var ex *exitError
		if errors.As(err, &ex) {
			return err
		}
		return notOperatorAPI(inv, err)
	}
	return nil
}

func notOperatorAPI(inv *invocation, err error) error {
	return &exitError{code: ExitUnreachable, msg: fmt.Sprintf("%s answered in a form this client does not know (%s: %v): is %s keygate's admin listener, of the same version?",
		inv.base.Redacted(), inv.where(), err, EnvURL)}
}

// where names the request, for messages.
func (inv *invocation) where() string {
	return inv.method + " " + inv.path
}

// send makes the request, bounded in time and in the answer's size.
func send(ctx context.Context, inv *invocation) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, inv.g.timeout)
	defer cancel()
	var err error
	var body io.Reader
	if inv.body != nil {
		body = bytes.NewReader(inv.body)
	}
	u := *inv.base
	u.RawPath = inv.base.EscapedPath() + inv.path
	if u.Path, err = url.PathUnescape(u.RawPath); err != nil {
		return 0, nil, &exitError{code: ExitUsage, msg: fmt.Sprintf("%s: %v", inv.where(), err)}
	}
	req, err := http.NewRequestWithContext(ctx, inv.method, u.String(), body)
	if err != nil {
		return 0, nil, &exitError{code: ExitUnreachable, msg: fmt.Sprintf("%s: %v", inv.where(), stripURLError(err))}
	}
	req.Header.Set("Accept", "application/json")
	if inv.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if inv.token != "" {
		req.Header.Set("Authorization", "Bearer "+inv.token)
	}
	client := &http.Client{
		// The token must not follow a redirect, and the operator API
		// never redirects: a redirect means the URL is not it.
		CheckRedirect: func(r *http.Request, via []*http.Request) error {
			return fmt.Errorf("redirected to %s", r.URL.Redacted())
		},
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, &exitError{code: ExitUnreachable, msg: reachError(ctx, inv, err)}
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, inv.maxResponse+1))
	if err != nil {
		return 0, nil, &exitError{code: ExitUnreachable, msg: fmt.Sprintf("%s: reading the answer: %v", inv.where(), stripURLError(err))}
	}
	if int64(len(raw)) > inv.maxResponse {
		return 0, nil, &exitError{code: ExitUnreachable, msg: fmt.Sprintf("%s: the answer is larger than %d bytes", inv.where(), inv.maxResponse)}
	}
	return resp.StatusCode, raw, nil
}

// reachError says why keygate could not be reached, in terms of what to
// check.
func reachError(ctx context.Context, inv *invocation, err error) string {
	base := inv.base.Redacted()
	var unknownCA x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var opErr *net.OpError
	var dnsErr *net.DNSError
	switch {
	case errors.Is(ctx.Err(), context.Canceled):
		return fmt.Sprintf("%s: interrupted", inv.where())
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fmt.Sprintf("%s: no answer from %s within %s (--timeout)", inv.where(), base, inv.g.timeout)
	case errors.As(err, &unknownCA), errors.As(err, &hostname):
		return fmt.Sprintf("cannot reach keygate at %s: TLS: %v", base, stripURLError(err))
	case strings.Contains(err.Error(), "tls:") || strings.Contains(err.Error(), "x509:"):
		return fmt.Sprintf("cannot reach keygate at %s: TLS: %v", base, stripURLError(err))
	case errors.As(err, &dnsErr):
		return fmt.Sprintf("cannot reach keygate at %s: unknown host %s (check %s)", base, dnsErr.Name, EnvURL)
	case errors.As(err, &opErr) && opErr.Op == "dial":
		return fmt.Sprintf("cannot reach keygate at %s: %v (is it running, with KEYGATE_ADMIN_TOKEN set? check %s)", base, opErr.Err, EnvURL)
	}
	return fmt.Sprintf("cannot reach keygate at %s: %v", base, stripURLError(err))
}

func statusLine(status int) string {
	if t := http.StatusText(status); t != "" {
		return fmt.Sprintf("%d %s", status, t)
	}
	return fmt.Sprint(status)
}

// apiMessage is the message of an error answer of keygate
// ({"error":true,"statusCode":…,"message":…}, or statusMessage), made safe
// to print; empty if the answer is not one.
func apiMessage(raw []byte) string {
	var e struct {
		Message       *string `json:"message"`
		StatusMessage *string `json:"statusMessage"`
		StatusCode    *int    `json:"statusCode"`
	}
	if json.Unmarshal(raw, &e) != nil || e.StatusCode == nil {
		return ""
	}
	msg := ""
	switch {
	case e.Message != nil:
		msg = *e.Message
	case e.StatusMessage != nil:
		msg = *e.StatusMessage
	}
	if len(msg) > 1000 {
		msg = msg[:1000] + "…"
	}
	return cell(msg)
}
