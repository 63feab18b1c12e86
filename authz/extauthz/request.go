package extauthz

import (
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"golang.org/x/net/http/httpguts"

	"github.com/keygate/keygate/gate"
	"github.com/keygate/keygate/guard"
	"github.com/keygate/keygate/listener"
)

// Bounds of what a CheckRequest may carry, as the data listener bounds an
// HTTP request: past them the request is refused (431), never read further.
const (
	// MaxHeaders is the most request headers (pseudo-headers excluded) a
	// check may carry; Envoy's own default is 100.
	MaxHeaders = 256
	// MaxHeaderBytes bounds the request target plus every header name and
	// value, as KEYGATE_LISTEN_ADDR's 64 KiB does; Envoy's default is 60 KiB.
	MaxHeaderBytes = 64 << 10
)

// Refusals of a malformed check, in the data path's shapes.
var (
	errNoHTTP       = &gate.ClientError{Status: http.StatusBadRequest, Msg: "Check request carries no HTTP request attributes"}
	errBadMethod    = &gate.ClientError{Status: http.StatusBadRequest, Msg: "Invalid request method"}
	errBadTarget    = &gate.ClientError{Status: http.StatusBadRequest, Msg: "Invalid request target"}
	errBadHeader    = &gate.ClientError{Status: http.StatusBadRequest, Msg: "Invalid request header"}
	errTooManyBytes = &gate.ClientError{Status: http.StatusRequestHeaderFieldsTooLarge, Msg: "Request headers too large"}
)

// RequestOf returns the facts of the request a check stands for, received at
// now: the method; the path and query of the request target, the path made
// canonical as the data listener makes it (listener.CanonicalPath) or, when
// rejectNonCanonical is set and it was not canonical, refused; the headers,
// lower-case in Envoy, in canonical form (pseudo-headers dropped); and the
// client's address, which is the source Envoy reports, else peer (the
// caller's own address). An error is a refusal for gate.Classify.
func RequestOf(cr *authv3.CheckRequest, peer string, now time.Time, rejectNonCanonical bool) (gate.Request, error) {
	hr := cr.GetAttributes().GetRequest().GetHttp()
	if hr == nil {
		return gate.Request{}, errNoHTTP
	}
	req := gate.Request{RemoteAddr: peer, Time: now}
	if a := sourceAddr(cr); a != "" {
		req.RemoteAddr = a
	}
	if !guard.ValidMethod(hr.Method) {
		return gate.Request{}, errBadMethod
	}
	req.Method = hr.Method
	size := len(hr.Path)
	if size > MaxHeaderBytes {
		return gate.Request{}, errTooManyBytes
	}
	h, err := headersOf(hr, size)
	if err != nil {
		return gate.Request{}, err
	}
	req.Header = h
	if err := setTarget(&req, hr.Path, rejectNonCanonical); err != nil {
		return gate.Request{}, err
	}
	return req, nil
}

// setTarget sets the path and query of req from a request target as sent
// ("/a/b?x=1"): RawPath as sent, which signatures cover, Path decoded and
// canonical, which route rules match.
func setTarget(req *gate.Request, target string, rejectNonCanonical bool) error {
	for i := 0; i < len(target); i++ {
		if c := target[i]; c <= ' ' || c == 0x7f {
			return errBadTarget
		}
	}
	rawPath, rawQuery, _ := strings.Cut(target, "?")
	if !strings.HasPrefix(rawPath, "/") {
		// "*" and absolute forms: the data path refuses them the same way.
		return gate.ErrNonCanonicalPath
	}
	u, err := url.ParseRequestURI(target)
	if err != nil {
		return errBadTarget
	}
	d, _, _, err := listener.CanonicalPath(u.Path, u.EscapedPath(), rejectNonCanonical)
	if err != nil {
		return err
	}
	req.Path, req.RawPath, req.RawQuery = d, rawPath, rawQuery
	return nil
}

// headersOf collects the request headers of hr, from the map Envoy sends by
// default or from header_map (encode_raw_headers), where a repeated header
// comes as repeated entries. used is the size already spent of
// MaxHeaderBytes.
func headersOf(hr *authv3.AttributeContext_HttpRequest, used int) (http.Header, error) {
	n := len(hr.GetHeaders()) + len(hr.GetHeaderMap().GetHeaders())
	if n > MaxHeaders+8 { // room for the pseudo-headers
		return nil, errTooManyBytes
	}
	h := make(http.Header, n)
	// One array backs the value slices of headers seen once (nearly all):
	// one allocation instead of one per header.
	one := make([]string, n)
	count := 0
	// fromMap: the map has one entry per name, so two spellings of one
	// name would make the value read depend on the map's order: refused.
	add := func(name, value string, fromMap bool) error {
		if strings.HasPrefix(name, ":") {
			return nil // :method, :path, :authority, :scheme: given as fields
		}
		used += len(name) + len(value)
		if count++; count > MaxHeaders || used > MaxHeaderBytes {
			return errTooManyBytes
		}
		if !httpguts.ValidHeaderFieldName(name) || !httpguts.ValidHeaderFieldValue(value) {
			return errBadHeader
		}
		k := textproto.CanonicalMIMEHeaderKey(name)
		vs, dup := h[k]
		if dup && fromMap {
			return errBadHeader
		}
		if !dup {
			one[count-1] = value
			h[k] = one[count-1 : count : count] // full: an append copies
			return nil
		}
		h[k] = append(vs, value)
		return nil
	}
	for name, value := range hr.GetHeaders() {
		if err := add(name, value, true); err != nil {
			return nil, err
		}
	}
	for _, hv := range hr.GetHeaderMap().GetHeaders() {
		v := hv.GetValue()
		if len(hv.GetRawValue()) > 0 {
			v = string(hv.GetRawValue())
		}
		if err := add(hv.GetKey(), v, false); err != nil {
			return nil, err
		}
	}
	return h, nil
}

// sourceAddr is the client address Envoy reports (host:port), or "" when it
// reports none usable.
func sourceAddr(cr *authv3.CheckRequest) string {
	sa := cr.GetAttributes().GetSource().GetAddress().GetSocketAddress()
	if sa == nil || sa.GetAddress() == "" || len(sa.GetAddress()) > 64 {
		return ""
	}
	return net.JoinHostPort(sa.GetAddress(), strconv.FormatUint(uint64(sa.GetPortValue()), 10))
}
