package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/keygate/keygate/listener"
)

// The direct path forwards the common request (GET, HEAD or OPTIONS, no
// body, no protocol upgrade, to a plain-HTTP upstream) on a pooled
// connection from the handler's own goroutine: it writes the request and
// reads the response itself, where http.Transport hands each request to a
// writer goroutine and each response to a reader goroutine. On a loopback
// sidecar those hand-offs and the transport's bookkeeping cost more than
// the decision does. Every other request (a body, an upgrade, a TLS
// upstream, a test's transport) goes through httputil.ReverseProxy and
// http.Transport as before. Both paths send the upstream the same request
// (rewrite) and treat its answer the same way (copyResponseHeader,
// bookUsage, upstreamFailed).

// direct is the connection pool of the direct path.
type direct struct {
	addr            string // host:port of the upstream
	dialer          net.Dialer
	upstreamTimeout time.Duration
	idleTimeout     time.Duration
	maxIdle         int

	mu   sync.Mutex
	idle []*upConn // most recently used last
	// sweep, while armed, closes the connections that stayed idle past
	// idleTimeout, so an idle sidecar does not keep them open (in
	// CLOSE_WAIT once the upstream closed its end) until traffic returns.
	// It is armed only while connections are idle: no goroutine or timer
	// outlives them.
	sweep *time.Timer
}

// maxResponseHeaderBytes bounds what the upstream may send before its
// answer's body (status line, headers, informational answers), as
// http.Transport's MaxResponseHeaderBytes does; past it the answer is a 502.
const maxResponseHeaderBytes = 1 << 20

// upConn is one connection to the upstream.
type upConn struct {
	conn net.Conn
	// headerBudget is what may still be read before the answer's body;
	// negative while a body is read (no bound: it streams).
	headerBudget int64
	br           *bufio.Reader
	bw           *bufio.Writer
	idleSince    time.Time
	// unwatch stops the watch on the request's context, which interrupts
	// the connection's I/O when the client goes away; false when it did.
	unwatch func() bool
	// mu orders the watch's interruption with setReadDeadline, so that a
	// deadline set as the client goes away cannot undo the interruption.
	mu          sync.Mutex
	interrupted bool
	onDone      func() // c.interrupt
}

// errHeaderTooLarge is an upstream answer whose head exceeds
// maxResponseHeaderBytes.
var errHeaderTooLarge = errors.New("upstream answer's headers exceed 1 MiB")

// Read reads from the connection within the header budget.
func (c *upConn) Read(p []byte) (int, error) {
	if c.headerBudget == 0 {
		return 0, errHeaderTooLarge
	}
	if c.headerBudget > 0 && int64(len(p)) > c.headerBudget {
		p = p[:c.headerBudget]
	}
	n, err := c.conn.Read(p)
	if c.headerBudget > 0 {
		c.headerBudget -= int64(n)
	}
	return n, err
}

// watch makes the end of ctx interrupt c's I/O until unwatch.
func (c *upConn) watch(ctx context.Context) {
	if c.onDone == nil {
		c.onDone = c.interrupt // bound once per connection, not per request
	}
	c.unwatch = context.AfterFunc(ctx, c.onDone)
}

// interrupt ends c's blocked I/O for good (until the connection closes).
func (c *upConn) interrupt() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.interrupted = true
	_ = c.conn.SetDeadline(aLongTimeAgo)
}

// setReadDeadline sets the read deadline unless the watch interrupted c.
func (c *upConn) setReadDeadline(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.interrupted {
		_ = c.conn.SetReadDeadline(t)
	}
}

// directIdleTimeout is how long a pooled connection may wait for its next
// request. It is below the keep-alive timeouts servers commonly use (5 s
// for Node.js and Apache): a connection the upstream may have closed is
// replaced by a fresh one (a loopback dial) rather than found closed by a
// request, which would then be sent again. http.Transport learns of such
// closes from its reader goroutine, which the direct path does without.
const directIdleTimeout = 4 * time.Second

// newDirect returns the direct path's pool for a plain-HTTP upstream, or
// nil when the upstream is not one.
func newDirect(up *url.URL, upstreamTimeout time.Duration) *direct {
	if up.Scheme != "http" || up.Host == "" {
		return nil
	}
	addr := up.Host
	if up.Port() == "" {
		addr = net.JoinHostPort(up.Hostname(), "80")
	}
	return &direct{addr: addr, dialer: net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second},
		upstreamTimeout: upstreamTimeout, idleTimeout: directIdleTimeout, maxIdle: 512}
}

// eligible says whether r may take the direct path: a request that is
// safe to send again on a fresh connection when a pooled one turns out to
// have been closed by the upstream (what http.Transport retries too), with
// nothing the transport's machinery is needed for.
func eligible(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
	default:
		return false
	}
	if r.ContentLength != 0 || (r.Body != nil && r.Body != http.NoBody) {
		return false
	}
	if _, ok := r.Header["Upgrade"]; ok {
		return false
	}
	if _, ok := r.Header["Expect"]; ok {
		return false
	}
	// ReverseProxy re-encodes a query with a semicolon; leave that to it.
	return !strings.Contains(r.URL.RawQuery, ";")
}

// get returns an idle connection (reused true) or dials a new one.
func (d *direct) get(ctx context.Context) (*upConn, bool, error) {
	now := time.Now()
	d.mu.Lock()
	for n := len(d.idle); n > 0; n = len(d.idle) {
		c := d.idle[n-1]
		d.idle[n-1] = nil
		d.idle = d.idle[:n-1]
		if now.Sub(c.idleSince) < d.idleTimeout {
			d.mu.Unlock()
			return c, true, nil
		}
		_ = c.conn.Close()
	}
	d.mu.Unlock()
	conn, err := d.dialer.DialContext(ctx, "tcp", d.addr)
	if err != nil {
		return nil, false, err
	}
	c := &upConn{conn: conn, headerBudget: -1, bw: bufio.NewWriterSize(conn, 4<<10)}
	c.br = bufio.NewReaderSize(c, 4<<10)
	return c, false, nil
}

// put keeps c for the next request, closing the oldest idle connection
// when it is stale or the pool is full.
func (d *direct) put(c *upConn) {
	now := time.Now()
	c.idleSince = now
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.idle) > 0 && (len(d.idle) >= d.maxIdle || now.Sub(d.idle[0].idleSince) >= d.idleTimeout) {
		_ = d.idle[0].conn.Close()
		d.idle = append(d.idle[:0], d.idle[1:]...)
	}
	d.idle = append(d.idle, c)
	if d.sweep == nil {
		d.sweep = time.AfterFunc(d.idleTimeout, d.closeStale)
	}
}

// closeStale closes the connections idle for idleTimeout or longer and
// arms the sweep again for the oldest of the others, if any.
func (d *direct) closeStale() {
	now := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for n < len(d.idle) && now.Sub(d.idle[n].idleSince) >= d.idleTimeout {
		_ = d.idle[n].conn.Close()
		d.idle[n] = nil
		n++
	}
	d.idle = append(d.idle[:0], d.idle[n:]...)
	d.sweep = nil
	if len(d.idle) > 0 {
		d.sweep = time.AfterFunc(d.idleTimeout-now.Sub(d.idle[0].idleSince), d.closeStale)
	}
}

// closeIdle closes every idle connection.
func (d *direct) closeIdle() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, c := range d.idle {
		_ = c.conn.Close()
	}
	d.idle = nil
	if d.sweep != nil {
		d.sweep.Stop()
		d.sweep = nil
	}
}

// aLongTimeAgo is a deadline in the past: it interrupts blocked I/O.
var aLongTimeAgo = time.Unix(1, 0)

// roundTrip sends out on a connection and reads the response headers. A
// connection from the pool the upstream has closed meanwhile (the request
// fails before any byte of an answer) is replaced by a fresh one, once.
func (d *direct) roundTrip(ctx context.Context, out *http.Request) (*http.Response, *upConn, error) {
	for attempt := 0; ; attempt++ {
		c, reused, err := d.get(ctx)
		if err != nil {
			return nil, nil, err
		}
		c.watch(ctx)
		resp, answered, err := d.exchange(c, out)
		if err == nil {
			return resp, c, nil
		}
		c.unwatch()
		_ = c.conn.Close()
		if !reused || answered || attempt > 0 || ctx.Err() != nil {
			return nil, nil, err
		}
	}
}

// exchange writes out on c and reads the response headers, skipping
// informational answers. answered says bytes of an answer arrived.
func (d *direct) exchange(c *upConn, out *http.Request) (resp *http.Response, answered bool, err error) {
	if err := out.Write(c.bw); err != nil {
		return nil, false, err
	}
	if err := c.bw.Flush(); err != nil {
		return nil, false, err
	}
	if d.upstreamTimeout > 0 {
		c.setReadDeadline(time.Now().Add(d.upstreamTimeout))
	}
	// The head of the answer is read within its budget, counting what the
	// buffer already holds; the body is not bounded.
	c.headerBudget = max(maxResponseHeaderBytes-int64(c.br.Buffered()), 1)
	defer func() { c.headerBudget = -1 }()
	if _, err := c.br.Peek(1); err != nil {
		return nil, false, err
	}
	for {
		resp, err = http.ReadResponse(c.br, out)
		if err != nil {
			return nil, true, err
		}
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
		// 1xx before the answer (103 Early Hints): not forwarded.
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return nil, true, errors.New("upstream switched protocols for a request that asked for no upgrade")
	}
	if d.upstreamTimeout > 0 {
		c.setReadDeadline(time.Time{})
	}
	return resp, true, nil
}

// serveDirect forwards r on the direct path (eligible(r) holds).
func (h *Handler) serveDirect(w *listener.Writer, r *http.Request, info *forwardInfo) {
	ctx := r.Context()
	// One allocation for the request and its URL; the copy keeps r's
	// context. Only what Request.Write reads matters.
	ob := &outbound{req: *r, url: *r.URL}
	out := &ob.req
	out.URL = &ob.url
	out.Header = outboundHeader(r.Header)
	out.Body, out.GetBody, out.ContentLength = nil, nil, 0
	out.TransferEncoding, out.Trailer, out.Close, out.RequestURI = nil, nil, false, ""
	h.rewrite(&httputil.ProxyRequest{In: r, Out: out}, info)
	if _, ok := out.Header["User-Agent"]; !ok {
		out.Header["User-Agent"] = []string{""} // not Go's default
	}

	start := time.Now()
	resp, c, err := h.direct.roundTrip(ctx, out)
	h.opt.Metrics.Upstream(time.Since(start))
	if err != nil {
		h.upstreamFailed(w, r, err)
		return
	}
	// Hop-by-hop headers go first, as ReverseProxy drops them before its
	// ModifyResponse: a usage header the upstream lists in Connection is
	// not booked on either path.
	removeHopHeaders(resp.Header)
	h.bookUsage(resp.Header, info)
	copyResponseHeader(w.Header(), resp)
	w.WriteHeader(resp.StatusCode)
	err = h.copyBody(w, resp)
	if !c.unwatch() || err != nil {
		_ = c.conn.Close()
		if errors.Is(err, errUpstreamBody) {
			// The answer is cut short: abort the client's connection so it
			// cannot take a truncated body for a whole one.
			panic(http.ErrAbortHandler)
		}
		return // the client went away
	}
	for k, vv := range resp.Trailer {
		w.Header()[k] = vv // announced in copyResponseHeader; net/http sends them after the body
	}
	if resp.Close || out.Close {
		_ = c.conn.Close()
		return
	}
	h.direct.put(c)
}

// outbound is the upstream's request with its URL.
type outbound struct {
	req http.Request
	url url.URL
}

// errUpstreamBody marks a failure reading the upstream's response body.
var errUpstreamBody = errors.New("reading the upstream's response body")

// copyBody streams resp's body to w, flushing every write of a stream
// (server-sent events, or a body of unknown length) as ReverseProxy does.
func (h *Handler) copyBody(w *listener.Writer, resp *http.Response) error {
	stream := resp.ContentLength == -1 || isEventStream(resp.Header)
	bp := h.buffers.get()
	defer h.buffers.put(bp)
	buf := *bp
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return err
			}
			if stream {
				_ = http.NewResponseController(w).Flush()
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return errors.Join(errUpstreamBody, rerr)
		}
	}
}

// isEventStream says the response is text/event-stream.
func isEventStream(h http.Header) bool {
	ct := h["Content-Type"]
	if len(ct) == 0 {
		return false
	}
	mt, _, _ := strings.Cut(ct[0], ";")
	return strings.EqualFold(strings.TrimSpace(mt), "text/event-stream")
}

// hopHeaders are the hop-by-hop headers (RFC 9110 §7.6.1), which are not
// forwarded in either direction.
var hopHeaders = [...]string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// outboundHeader is the client's header without its hop-by-hop fields and
// the forwarding headers rewrite sets afresh. Values are shared with in,
// never modified.
func outboundHeader(in http.Header) http.Header {
	out := make(http.Header, len(in)+8)
	for k, vv := range in {
		out[k] = vv
	}
	removeHopHeaders(out)
	if httpguts.HeaderValuesContainsToken(in["Te"], "trailers") {
		out["Te"] = []string{"trailers"}
	}
	delete(out, "Forwarded")
	delete(out, "X-Forwarded-For")
	delete(out, "X-Forwarded-Host")
	delete(out, "X-Forwarded-Proto")
	return out
}

// removeHopHeaders deletes the hop-by-hop headers of h, and those its
// Connection header names.
func removeHopHeaders(h http.Header) {
	for _, v := range h["Connection"] {
		for name := range strings.SplitSeq(v, ",") {
			if name = strings.TrimSpace(name); name != "" {
				delete(h, http.CanonicalHeaderKey(name))
			}
		}
	}
	for _, name := range hopHeaders {
		delete(h, name)
	}
}

// copyResponseHeader adds the upstream's response header (its hop-by-hop
// fields already removed) to dst, announcing its trailers. Values are
// taken over, not copied: the response is the direct path's own.
func copyResponseHeader(dst http.Header, resp *http.Response) {
	for k, vv := range resp.Header {
		if old, ok := dst[k]; ok {
			dst[k] = append(old, vv...)
		} else {
			dst[k] = vv
		}
	}
	if len(resp.Trailer) > 0 {
		names := make([]string, 0, len(resp.Trailer))
		for k := range resp.Trailer {
			names = append(names, k)
		}
		dst["Trailer"] = []string{strings.Join(names, ", ")}
	}
}
