// Package listener is the base of the data listener: the response Writer
// every front writes through (status, egress count, per-write deadlines),
// the record the access log line and request metrics are made of, and the
// table of self-served routes, tried before the data path. The table's
// contents are wired in one place (sidecar/routes.go); listener knows no
// front.
package listener

import (
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/keygate/keygate/gate"
	"github.com/keygate/keygate/guard"
	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/metrics"
)

// Handler serves a request through a Writer, filling its record.
type Handler interface {
	Serve(w *Writer, r *http.Request)
}

// HandlerFunc is a function serving as a Handler.
type HandlerFunc func(w *Writer, r *http.Request)

// Serve calls f.
func (f HandlerFunc) Serve(w *Writer, r *http.Request) { f(w, r) }

// Routes maps path → method → handler. Paths match exactly: keygate's own
// routes never shadow an upstream path below them. The one exception is a
// tree (AddTree): every path below its prefix, with every method, is
// keygate's (the customer portal's pages), so that an unknown page or a
// wrong method is answered by keygate rather than forwarded.
type Routes struct {
	m     map[string]map[string]Handler
	trees []tree
}

// tree is a handler owning every path below prefix (which ends in "/").
type tree struct {
	prefix string
	h      Handler
}

// NewRoutes returns an empty table.
func NewRoutes() *Routes { return &Routes{m: make(map[string]map[string]Handler)} }

// Add registers h for method and path.
func (t *Routes) Add(method, path string, h HandlerFunc) {
	if t.m[path] == nil {
		t.m[path] = make(map[string]Handler)
	}
	t.m[path][method] = h
}

// AddTree registers h for every method and every path starting with
// prefix, which must end in "/". Exact routes are tried first.
func (t *Routes) AddTree(prefix string, h HandlerFunc) {
	if !strings.HasSuffix(prefix, "/") {
		panic("listener.Routes.AddTree: prefix must end in /: " + prefix)
	}
	t.trees = append(t.trees, tree{prefix: prefix, h: h})
}

// Lookup returns the handler of a self-served route. A self-served path
// asked with another method goes to the data path like any other request,
// except below a tree, which answers every method itself.
func (t *Routes) Lookup(method, path string) (Handler, bool) {
	if m, ok := t.m[path]; ok {
		if h, ok := m[method]; ok {
			return h, true
		}
	}
	for _, tr := range t.trees {
		if strings.HasPrefix(path, tr.prefix) {
			return tr.h, true
		}
	}
	return nil, false
}

// Options configure a Listener. Data is required.
type Options struct {
	// Routes are the self-served routes; nil = none.
	Routes *Routes
	// Data serves every request no route matches.
	Data Handler
	// UpstreamTimeout (default 60s) and WriteTimeout (default 30s) set the
	// deadlines: a response must be written within their sum of the
	// request's start, after which every write renews the deadline by
	// WriteTimeout; a self-served request body must arrive within
	// WriteTimeout.
	UpstreamTimeout time.Duration
	WriteTimeout    time.Duration
	// RejectNonCanonical refuses a request whose path is not canonical
	// (KEYGATE_PATH_NORMALIZE=reject) instead of rewriting it (the
	// default). Paths that cannot be made canonical (a NUL, a backslash,
	// an encoded slash) are refused either way.
	RejectNonCanonical bool
	// Front labels the listener's requests in the metrics and the access
	// log (default metrics.FrontProxy).
	Front   string
	Log     *zap.Logger
	Metrics *metrics.Metrics
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Listener is the http.Handler of the data listener.
type Listener struct {
	opt    Options
	access *zap.Logger
}

// New returns a Listener for o.
func New(o Options) *Listener {
	if o.Data == nil {
		panic("listener.New: Options.Data is required")
	}
	if o.Routes == nil {
		o.Routes = NewRoutes()
	}
	if o.UpstreamTimeout <= 0 {
		o.UpstreamTimeout = 60 * time.Second
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = 30 * time.Second
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Front == "" {
		o.Front = metrics.FrontProxy
	}
	return &Listener{opt: o, access: o.Log.Named("access")}
}

// ServeHTTP routes self-served paths to their handlers and the rest to the
// data path, then writes the access log line and the request metrics.
func (l *Listener) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := l.opt.Now()
	sw := &Writer{ResponseWriter: w, writeTimeout: l.opt.WriteTimeout}
	// One write deadline for the whole request in the common case: the
	// upstream may take UpstreamTimeout to answer, then the response gets
	// WriteTimeout; writes renew it only once a response outlasts that
	// (streams). It also replaces a stale deadline left on the connection
	// by an earlier request, and covers net/http's own writes (100
	// Continue, the final flush). Deadlines use the real clock, not opt.Now.
	sw.DeadlineFor(time.Now(), l.opt.UpstreamTimeout+l.opt.WriteTimeout)
	if r.Body != nil && r.Body != http.NoBody {
		sw.body.ReadCloser = r.Body
		r.Body = &sw.body
		// net/http looks at the body it made once the handler returns (to
		// drain it, or to linger before closing so the client reads the
		// answer instead of a reset): give it back.
		defer func(body io.ReadCloser) { r.Body = body }(sw.body.ReadCloser)
	}
	if !l.canonicalise(r) {
		sw.Fail(r, gate.ErrNonCanonicalPath, start, l.opt.Log)
	} else if route, ok := l.opt.Routes.Lookup(r.Method, r.URL.Path); ok {
		l.serveSelf(route, sw, r)
	} else {
		l.opt.Data.Serve(sw, r)
	}
	Finish(l.access, l.opt.Metrics, l.opt.Front, r.Method, r.URL.Path, &sw.Record, l.opt.Now().Sub(start))
}

// canonicalise rewrites r's path to its canonical form (guard.CanonicalPath),
// which self-served routes, route rules and the upstream all see; it
// reports false when the path must be refused instead. The path as sent
// stays in r.RequestURI, which signatures cover.
func (l *Listener) canonicalise(r *http.Request) bool {
	d, e, changed, err := CanonicalPath(r.URL.Path, r.URL.EscapedPath(), l.opt.RejectNonCanonical)
	if err != nil {
		return false
	}
	if changed {
		r.URL.Path, r.URL.RawPath = d, e
		if d == e {
			r.URL.RawPath = ""
		}
	}
	return true
}

// CanonicalPath is the KEYGATE_PATH_NORMALIZE decision every front makes
// on a request path, given decoded and escaped: its canonical form
// (guard.CanonicalPath) and whether that changed it, or
// gate.ErrNonCanonicalPath when the path has no canonical form or, with
// rejectNonCanonical set, is not canonical.
func CanonicalPath(decoded, escaped string, rejectNonCanonical bool) (canonDecoded, canonEscaped string, changed bool, err error) {
	d, e, changed, err := guard.CanonicalPath(decoded, escaped)
	if err != nil || changed && rejectNonCanonical {
		return "", "", false, gate.ErrNonCanonicalPath
	}
	return d, e, changed, nil
}

// serveSelf runs a self-served route. Its body (1 MiB at most) must arrive
// within WriteTimeout: a client that trickles bytes cannot hold a handler,
// nor the connection afterwards (net/http reads an unread body's rest before
// reusing a connection). net/http replaces the deadline when it reads the
// connection's next request.
func (l *Listener) serveSelf(route Handler, w *Writer, r *http.Request) {
	if r.Body != nil && r.Body != http.NoBody {
		_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(l.opt.WriteTimeout)) // unsupported by test recorders: fine
	}
	route.Serve(w, r)
}

// Finish writes the access log line and the request metrics of a request
// to front (metrics.Front*) that took d. method and path are the request's
// as decided: an authorization front passes the original request's.
// A front that writes no http response (the gRPC one) fills a Record of
// its own.
func Finish(access *zap.Logger, m *metrics.Metrics, front, method, path string, w *Record, d time.Duration) {
	status := w.Status
	if status == 0 {
		status = http.StatusOK
	}
	m.Request(front, w.Org, w.Outcome, status, d)
	if w.WouldLimit != "" {
		m.WouldLimit(w.WouldLimit)
	}
	if ce := access.Check(zap.InfoLevel, "request"); ce != nil {
		fields := [9]zap.Field{
			zap.String("front", front),
			zap.String("method", method),
			zap.String("path", path), // never the query: it may carry credentials
			zap.Int("status", status),
			zap.Duration("duration", d),
			zap.String("org_id", w.Org),
			zap.String("key_uid", w.Key),
			zap.String("outcome", w.Outcome),
		}
		n := 8
		if w.WouldLimit != "" {
			fields[n] = zap.String("would_limit", w.WouldLimit)
			n++
		}
		ce.Write(fields[:n]...)
	}
}

// NewWriter wraps w with no deadlines of its own (the operator listener has
// server-wide timeouts).
func NewWriter(w http.ResponseWriter) *Writer { return &Writer{ResponseWriter: w} }

// Classify classifies err for the answer, records its outcome and logs an
// internal error's details (never shown to the client).
func (w *Writer) Classify(r *http.Request, err error, now time.Time, log *zap.Logger) gate.Problem {
	p := gate.Classify(err, now)
	w.Outcome = p.Outcome
	if p.Internal {
		log.Error("request failed", zap.String("path", r.URL.Path), zap.Error(err))
	}
	return p
}

// Fail answers with err's problem in the data path's shape. When the client
// has gone, whatever failed failed because of that: it is recorded as
// client_closed, not as a store or upstream fault.
func (w *Writer) Fail(r *http.Request, err error, now time.Time, log *zap.Logger) {
	if r.Context().Err() != nil {
		w.Outcome = metrics.OutcomeClientClosed
		w.WriteHeader(gate.StatusClientClosed)
		return
	}
	gate.WriteDataProblem(w, w.Classify(r, err, now, log))
}

// Record is what the access log line and the request metrics say of a
// request (Finish).
type Record struct {
	// Status is the status answered (0 until one is, read as 200).
	Status int
	// Org, Key and Outcome are who asked and how it ended; fronts fill them.
	Org, Key, Outcome string
	// WouldLimit names the shadow rate limits that would have refused the
	// request (comma-separated); logged when set.
	WouldLimit string
}

// Writer records the status and counts the body bytes of a response.
// It unwraps for http.ResponseController, so flushing reaches the client.
// It also keeps a write deadline on the connection (the data listener has no
// server-wide WriteTimeout, which would cut streams short): set once when the
// request starts, far enough for the upstream's answer and writeTimeout more,
// and moved on by writes only when a response outlasts that (streams).
type Writer struct {
	http.ResponseWriter
	// Record is what the access log line and the request metrics say of
	// the request: Status is the status written, the rest fronts fill.
	Record
	// CountEgress makes Write add to Egress, the bytes of the upstream's
	// response body; the data path books them once, when it is done.
	CountEgress bool
	Egress      int64

	// body wraps the request body (when there is one) to learn whether it
	// was read to its end.
	body trackedBody

	writeTimeout time.Duration
	// renewAt is when the write deadline is next moved: half-way to it, so
	// a stream of small writes does not reset the deadline on each one.
	renewAt time.Time
}

// extendDeadline moves the write deadline writeTimeout past now, unless it
// was moved recently.
func (w *Writer) extendDeadline(now time.Time) {
	if w.writeTimeout <= 0 || now.Before(w.renewAt) {
		return
	}
	w.DeadlineFor(now, w.writeTimeout)
}

// DeadlineFor sets the write deadline d past now. Writers without
// deadlines (tests' recorders) are left alone.
func (w *Writer) DeadlineFor(now time.Time, d time.Duration) {
	if w.writeTimeout <= 0 {
		return
	}
	_ = http.NewResponseController(w.ResponseWriter).SetWriteDeadline(now.Add(d))
	w.renewAt = now.Add(d - w.writeTimeout/2)
}

func (w *Writer) WriteHeader(code int) {
	if code == http.StatusSwitchingProtocols && w.writeTimeout > 0 {
		// The connection is about to be hijacked for another protocol
		// (WebSocket) that runs as long as it likes: no deadline.
		_ = http.NewResponseController(w.ResponseWriter).SetWriteDeadline(time.Time{})
		w.writeTimeout = 0
	}
	if w.Status == 0 && code >= 200 {
		w.Status = code
	}
	if code >= 400 {
		w.refuseUnreadBody()
	}
	w.extendDeadline(time.Now())
	w.ResponseWriter.WriteHeader(code)
}

func (w *Writer) Write(b []byte) (int, error) {
	if w.Status == 0 {
		w.Status = http.StatusOK
	}
	w.extendDeadline(time.Now())
	n, err := w.ResponseWriter.Write(b)
	if w.CountEgress {
		w.Egress += int64(n)
	}
	return n, err
}

// Unwrap exposes the underlying writer to http.ResponseController.
func (w *Writer) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Flush lets pre-ResponseController code flush through the wrapper.
func (w *Writer) Flush() { _ = http.NewResponseController(w.ResponseWriter).Flush() }

// Authenticate authenticates a self-served request from its headers
// (gate.Decider.Authenticate) and records who it is.
func Authenticate(g *gate.Decider, w *Writer, r *http.Request) (keys.Principal, error) {
	req := gate.RequestOf(r, g.Now())
	p, err := g.Authenticate(r.Context(), &req)
	return w.record(p, err)
}

// AuthenticateCredential is Authenticate for a credential found elsewhere
// than in the headers.
func AuthenticateCredential(g *gate.Decider, w *Writer, r *http.Request, cred gate.Credential) (keys.Principal, error) {
	req := gate.RequestOf(r, g.Now())
	p, err := g.AuthenticateCredential(r.Context(), &req, cred)
	return w.record(p, err)
}

// record notes an authenticated principal for the access log.
func (w *Writer) record(p keys.Principal, err error) (keys.Principal, error) {
	if err != nil {
		return keys.Principal{}, err
	}
	w.Org, w.Key = p.Key.OrgID, p.Key.UID
	return p, nil
}

// trackedBody is a request body that remembers whether it was read to its
// end (or failed), and whether it failed.
type trackedBody struct {
	io.ReadCloser
	done bool
	// failed is set by the reader, which may be the upstream transport's
	// goroutine, and read by the handler's.
	failed atomic.Bool
}

func (b *trackedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		b.done = true
		if err != io.EOF {
			b.failed.Store(true)
		}
	}
	return n, err
}

// drainWindow is how long net/http may go on reading a refused request's
// unread body after the answer: enough for a body already on its way (so
// the client reads the answer, not a reset), too short to hold a
// connection for a client that never sends it.
const drainWindow = 200 * time.Millisecond

// BodyFailed reports whether reading the request body failed (a malformed
// chunked body, a connection cut mid-body): forwarding it failed for the
// client's sake, not the upstream's.
func (w *Writer) BodyFailed() bool { return w.body.failed.Load() }

// refuseUnreadBody makes a refusal not wait for a body nobody read: the
// answer carries Connection: close, so net/http does not drain the body
// before answering, and the connection's read deadline is drainWindow away,
// so it does not hold the goroutine draining it afterwards; the connection
// closes after the answer.
func (w *Writer) refuseUnreadBody() {
	if w.body.ReadCloser == nil || w.body.done {
		return
	}
	w.Header()["Connection"] = []string{"close"}
	_ = http.NewResponseController(w.ResponseWriter).SetReadDeadline(time.Now().Add(drainWindow)) // unsupported by test recorders: fine
}
