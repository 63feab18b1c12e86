package proxy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/quota"
)

// Options configure a Handler. Upstream, Store, Auth and Counter are
// required.
type Options struct {
	// Upstream is the backend requests are forwarded to.
	Upstream *url.URL
	Store    keys.Store
	Auth     *keys.Authenticator
	Counter  quota.Counter
	// RemoteCounter says the Counter talks to a server over the network and
	// may retry a charge after a lost reply: every charge then carries an
	// idempotency token so a retry counts once. An in-process counter needs
	// none, and keeping tokens would only cost it memory.
	RemoteCounter bool
	// Rules set permissions and costs per route.
	Rules Rules
	// FailOpen admits verified keys uncounted while the store is
	// unreachable; otherwise such requests get 503.
	FailOpen bool
	// StoreTimeout bounds the store calls of one request (default 250ms).
	StoreTimeout time.Duration
	// UpstreamTimeout bounds the wait for the upstream's response headers
	// (default 60s); past it the client gets 504.
	UpstreamTimeout time.Duration
	// WriteTimeout bounds the client's stalls (default 30s): a response
	// must be written within UpstreamTimeout+WriteTimeout of the request's
	// start, after which every write renews the deadline by WriteTimeout,
	// and each read of a forwarded request body must progress within
	// WriteTimeout. A stream (SSE) or a large upload lasts as long as the
	// client keeps it moving; a client that stalls cannot hold a connection
	// (and an upstream one) for ever.
	WriteTimeout time.Duration
	// TSSkew is how far the ts parameter of partner and signed requests may
	// be from now (default 5m).
	TSSkew time.Duration
	// Sealer seals the secrets of new keys so they can sign requests; nil
	// when signing is off. Auth must be built with the same Sealer.
	Sealer *keys.Sealer
	// Provider is the provider field of the stats routes (default keygate).
	Provider string
	// Transport replaces the upstream transport (tests).
	Transport http.RoundTripper
	Log       *zap.Logger
	Metrics   *Metrics
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Handler serves the data listener: the self-served routes of routes.go and,
// for everything else, the authenticated, counted, forwarded data path. It is
// safe for concurrent use; create it with New.
type Handler struct {
	opt     Options
	log     *zap.Logger
	access  *zap.Logger
	forward *httputil.ReverseProxy
	routes  routeTable
	usage   *usageBook

	// tokenPrefix and tokenSeq make each charge's idempotency token unique
	// across sidecars and requests.
	tokenPrefix string
	tokenSeq    atomic.Uint64
	// logins bounds the password checks running at once (argon2id holds
	// 32 MiB each).
	logins chan struct{}
	// lastFailOpenLog rate-limits the fail-open warning (unix nanos).
	lastFailOpenLog atomic.Int64
}

// New returns a Handler for o. A missing required option is a programming
// error in the caller and panics here, at construction, rather than on the
// first request.
func New(o Options) *Handler {
	if o.Upstream == nil || o.Store == nil || o.Auth == nil || o.Counter == nil {
		panic("proxy.New: Options.Upstream, Store, Auth and Counter are required")
	}
	if o.StoreTimeout <= 0 {
		o.StoreTimeout = 250 * time.Millisecond
	}
	if o.UpstreamTimeout <= 0 {
		o.UpstreamTimeout = 60 * time.Second
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = 30 * time.Second
	}
	if o.TSSkew <= 0 {
		o.TSSkew = 5 * time.Minute
	}
	if o.Provider == "" {
		o.Provider = "keygate"
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	var p [6]byte
	_, _ = rand.Read(p[:])
	h := &Handler{
		opt:         o,
		log:         o.Log.Named("proxy"),
		access:      o.Log.Named("access"),
		usage:       newUsageBook(),
		tokenPrefix: hex.EncodeToString(p[:]) + "-",
		logins:      make(chan struct{}, maxConcurrentLogins),
	}
	h.forward = h.newReverseProxy()
	h.routes = h.selfRoutes()
	return h
}

// accessRecord collects what the access log line and metrics of a request
// say about it.
type accessRecord struct {
	org, key, outcome string
}

// ServeHTTP routes self-served paths to their handlers and proxies the rest.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := h.opt.Now()
	sw := &statusWriter{ResponseWriter: w, writeTimeout: h.opt.WriteTimeout}
	// One write deadline for the whole request in the common case: the
	// upstream may take UpstreamTimeout to answer, then the response gets
	// WriteTimeout; writes renew it only once a response outlasts that
	// (streams). It also replaces a stale deadline left on the connection
	// by an earlier request, and covers net/http's own writes (100
	// Continue, the final flush). Deadlines use the real clock, not opt.Now.
	sw.deadlineFor(time.Now(), h.opt.UpstreamTimeout+h.opt.WriteTimeout)
	rec := &accessRecord{}
	if route, ok := h.routes.lookup(r.Method, r.URL.Path); ok {
		h.serveSelf(route, sw, r, rec)
	} else {
		h.serveData(sw, r, rec, start)
	}
	h.finish(r, sw, rec, start)
}

// serveSelf runs a self-served route. Its body (1 MiB at most) must arrive
// within WriteTimeout: a client that trickles bytes cannot hold a handler,
// nor the connection afterwards (net/http reads an unread body's rest before
// reusing a connection). net/http replaces the deadline when it reads the
// connection's next request.
func (h *Handler) serveSelf(route selfHandler, w *statusWriter, r *http.Request, rec *accessRecord) {
	if h.opt.WriteTimeout > 0 && r.Body != nil && r.Body != http.NoBody {
		_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(h.opt.WriteTimeout)) // unsupported by test recorders: fine
	}
	route(w, r, rec)
}

// serveData is the data path: credential → principal → permission → charge
// → forward.
func (h *Handler) serveData(w *statusWriter, r *http.Request, rec *accessRecord, now time.Time) {
	cred, err := credentialFrom(r.Header)
	if err != nil {
		h.fail(w, r, rec, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.opt.StoreTimeout)
	p, nonce, err := h.verify(ctx, r, cred)
	if err != nil {
		cancel()
		h.fail(w, r, rec, err)
		return
	}
	rec.org, rec.key = p.Key.OrgID, p.Key.UID
	d := h.opt.Rules.match(r.Method, r.URL.Path)
	if !p.Can(d.permission) {
		cancel()
		h.fail(w, r, rec, &keys.PermissionError{Need: d.permission})
		return
	}
	period := planPeriod(p.Plan)
	res, err := h.charge(ctx, p, period, d.cost, now, nonce)
	cancel()
	switch {
	case err == nil:
		setRateLimit(w.Header(), p, res, now)
	// A signed request whose one-time use could not be recorded is refused
	// even in open mode: its signature could be replayed.
	case h.opt.FailOpen && errors.Is(err, quota.ErrUnavailable) && nonce.value == "" && r.Context().Err() == nil:
		h.failOpen(p, err)
	default:
		h.fail(w, r, rec, err)
		return
	}
	rec.outcome = outcomeAdmitted
	info := &forwardInfo{p: p, period: period, at: now, bearer: cred.bearer}
	org := p.Key.OrgID
	if r.Body != nil && r.Body != http.NoBody {
		body := &requestBody{ReadCloser: r.Body, rc: http.NewResponseController(w), timeout: h.opt.WriteTimeout, info: info}
		if r.ContentLength > 0 {
			h.usage.add(org, quota.Meter{Name: meterIngress, Period: period}, r.ContentLength, now, info.p.Plan.Limits)
		} else {
			body.book = h.usage // length unknown: count as it is read
		}
		r.Body = body
	}
	w.countEgress = true
	h.forward.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), forwardKey{}, info)))
	if w.egress > 0 {
		h.usage.add(org, quota.Meter{Name: meterEgress, Period: period}, w.egress, now, info.p.Plan.Limits)
	}
}

// planPeriod returns the plan's period. Plans are validated when created, so
// a bad one cannot occur; month is the safe reading if it does.
func planPeriod(pl keys.Plan) quota.Period {
	period, err := quota.ParsePeriod(pl.Period)
	if err != nil {
		return quota.PeriodMonth
	}
	return period
}

// authenticate turns a request's credential into a principal, timing the
// store call. The request is needed to verify signed requests, whose
// signature it also spends (a cost-0 charge carrying the nonce): callers
// other than the data path charge nothing themselves.
func (h *Handler) authenticate(ctx context.Context, r *http.Request, c credential) (keys.Principal, error) {
	p, nonce, err := h.verify(ctx, r, c)
	if err != nil || nonce.value == "" {
		return p, err
	}
	if _, err := h.charge(ctx, p, planPeriod(p.Plan), 0, h.opt.Now(), nonce); err != nil {
		return keys.Principal{}, err
	}
	return p, nil
}

// verify authenticates a credential; for a signed request it also returns
// the nonce the caller must spend with its charge (see signing.go).
func (h *Handler) verify(ctx context.Context, r *http.Request, c credential) (p keys.Principal, nonce signedNonce, err error) {
	start := time.Now()
	if c.signature != "" {
		p, nonce, err = h.verifySigned(ctx, r, c)
	} else {
		p, err = h.opt.Auth.Authenticate(ctx, c.Credential)
	}
	h.opt.Metrics.store("authenticate", time.Since(start), storeFault(ctx, err, keys.ErrUnavailable))
	return p, nonce, err
}

// charge counts cost against the principal's key and organization, spending
// a signed request's nonce (if any) in the same round trip; a used nonce
// fails with quota.ErrReplay and counts nothing.
func (h *Handler) charge(ctx context.Context, p keys.Principal, period quota.Period, cost int64, now time.Time, nonce signedNonce) (quota.Result, error) {
	orgMax, _ := p.Org.RequestQuota(p.Plan)
	c := quota.Charge{
		OrgID:      p.Key.OrgID,
		KeyID:      p.Key.UID,
		Cost:       cost,
		OrgMax:     orgMax,
		KeyMax:     p.Key.KeyMax(),
		Period:     period,
		At:         now,
		Nonce:      nonce.value,
		NonceUntil: nonce.until,
	}
	if h.opt.RemoteCounter {
		c.Token = h.tokenPrefix + strconv.FormatUint(h.tokenSeq.Add(1), 36)
	}
	start := time.Now()
	res, err := h.opt.Counter.Charge(ctx, c)
	h.opt.Metrics.store("charge", time.Since(start), storeFault(ctx, err, quota.ErrUnavailable))
	if err == nil {
		h.opt.Metrics.quota(p.Key.OrgID, period.String(), res.OrgUsed, orgMax)
	}
	return res, err
}

// failOpen records an uncounted admission during a store outage.
func (h *Handler) failOpen(p keys.Principal, err error) {
	h.opt.Metrics.failOpen()
	now := time.Now().UnixNano()
	last := h.lastFailOpenLog.Load()
	if now-last >= int64(10*time.Second) && h.lastFailOpenLog.CompareAndSwap(last, now) {
		h.log.Warn("store unreachable: admitting verified keys uncounted (KEYGATE_FAILURE_MODE=open)",
			zap.String("org_id", p.Key.OrgID), zap.Error(err))
	}
}

// storeFault reports whether err is the store's fault: unavailable, and not
// because the caller's context was cancelled (the client went away).
func storeFault(ctx context.Context, err, unavailable error) bool {
	return errors.Is(err, unavailable) && !errors.Is(ctx.Err(), context.Canceled)
}

// fail answers a data-path request with the error's problem. When the
// client has gone, whatever failed failed because of that: it is recorded as
// client_closed, not as a store or upstream fault.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, rec *accessRecord, err error) {
	if r.Context().Err() != nil {
		rec.outcome = outcomeClientClosed
		w.WriteHeader(statusClientClosed)
		return
	}
	p := classify(err, h.opt.Now())
	rec.outcome = p.outcome
	if p.internal {
		h.log.Error("request failed", zap.String("path", r.URL.Path), zap.Error(err))
	}
	writeDataProblem(w, p)
}

// finish writes the access log line and the request metrics.
func (h *Handler) finish(r *http.Request, sw *statusWriter, rec *accessRecord, start time.Time) {
	d := h.opt.Now().Sub(start)
	if sw.outcome != "" {
		rec.outcome = sw.outcome
	}
	status := sw.status
	if status == 0 {
		status = http.StatusOK
	}
	h.opt.Metrics.request(rec.org, rec.outcome, status, d)
	if ce := h.access.Check(zap.InfoLevel, "request"); ce != nil {
		ce.Write(
			zap.String("method", r.Method),
			zap.String("path", r.URL.Path), // never the query: it may carry credentials
			zap.Int("status", status),
			zap.Duration("duration", d),
			zap.String("org_id", rec.org),
			zap.String("key_uid", rec.key),
			zap.String("outcome", rec.outcome),
		)
	}
}

// setRateLimit writes the IETF RateLimit-Policy and RateLimit headers
// (draft-ietf-httpapi-ratelimit-headers) for the tighter of the key's and the
// organization's quotas. Unlimited principals get none.
func setRateLimit(h http.Header, p keys.Principal, res quota.Result, now time.Time) {
	orgMax, _ := p.Org.RequestQuota(p.Plan)
	keyMax := p.Key.KeyMax()
	name, limit, used := "", int64(-1), int64(0)
	if orgMax >= 0 {
		name, limit, used = "org", orgMax, res.OrgUsed
	}
	if keyMax >= 0 && (limit < 0 || keyMax-res.KeyUsed < limit-used) {
		name, limit, used = "key", keyMax, res.KeyUsed
	}
	if limit < 0 {
		return
	}
	policy := `"` + name + `";q=` + strconv.FormatInt(limit, 10)
	state := `"` + name + `";r=` + strconv.FormatInt(max(limit-used, 0), 10)
	if w := res.Window; !w.End.IsZero() {
		policy += ";w=" + strconv.FormatInt(int64(w.End.Sub(w.Start)/time.Second), 10)
		state += ";t=" + strconv.FormatInt(int64((w.Remaining(now)+time.Second-1)/time.Second), 10)
	}
	// Canonical names, set directly: Header.Set would canonicalise them on
	// every request.
	h["Ratelimit-Policy"] = []string{policy}
	h["Ratelimit"] = []string{state}
}
