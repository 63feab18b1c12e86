package gate

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/http"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/keygate/keygate/guard"
	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/metrics"
	"github.com/keygate/keygate/quota"
)

// Options configure a Decider. Auth and Counter are required.
type Options struct {
	Auth    *keys.Authenticator
	Counter quota.Counter
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
	// StoreTimeout bounds the store calls of one decision (default 250ms).
	StoreTimeout time.Duration
	// TSSkew is how far the ts parameter of partner and signed requests may
	// be from now (default 5m).
	TSSkew time.Duration
	// FailLimit bounds the failed authentications of one client address
	// (KEYGATE_AUTH_FAIL_LIMIT); past it, credentials the address has not
	// proved and the cache cannot verify are refused without a store
	// lookup. The zero value is off.
	FailLimit guard.FailLimit
	// TrustedProxies are the peers whose X-Forwarded-For names the client.
	TrustedProxies guard.TrustedProxies
	// Toucher, when set, learns of every key that authenticated a request
	// (last_used_at), off the request's critical path.
	Toucher *keys.Toucher
	Log     *zap.Logger
	Metrics *metrics.Metrics
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Decider decides whether a request may pass. It is safe for concurrent
// use; create it with New.
type Decider struct {
	opt Options
	log *zap.Logger

	// tokenPrefix and tokenSeq make each charge's idempotency token unique
	// across sidecars and requests.
	tokenPrefix string
	tokenSeq    atomic.Uint64
	// lastFailOpenLog rate-limits the fail-open warning (unix nanos).
	lastFailOpenLog atomic.Int64
	// fails counts failed authentications by client address; nil when off.
	fails *guard.FailLimiter[netip.Addr, string]
}

// New returns a Decider for o. A missing required option is a programming
// error in the caller and panics here, at construction, rather than on the
// first request.
func New(o Options) *Decider {
	if o.Auth == nil || o.Counter == nil {
		panic("gate.New: Options.Auth and Counter are required")
	}
	if o.StoreTimeout <= 0 {
		o.StoreTimeout = 250 * time.Millisecond
	}
	if o.TSSkew <= 0 {
		o.TSSkew = 5 * time.Minute
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	var p [6]byte
	_, _ = rand.Read(p[:])
	d := &Decider{
		opt:         o,
		log:         o.Log.Named("gate"),
		tokenPrefix: hex.EncodeToString(p[:]) + "-",
	}
	if !o.FailLimit.Off() {
		d.fails = guard.NewFailLimiter[netip.Addr, string](o.FailLimit, 0, 0)
	}
	return d
}

// ClientAddr is the address of the client a request comes from: its peer,
// or the last hop before the first trusted proxy.
func (d *Decider) ClientAddr(req *Request) netip.Addr {
	return guard.ClientAddr(req.RemoteAddr, req.Header["X-Forwarded-For"], d.opt.TrustedProxies)
}

// TooManyFailuresError refuses a credential from an address that failed to
// authenticate too often; nothing was looked up.
type TooManyFailuresError struct {
	RetryAfter time.Duration
}

func (e *TooManyFailuresError) Error() string { return "too many failed authentications" }

// admit applies the failed-authentication limit to a credential before any
// store lookup, returning the address key to report the outcome under
// (invalid when the limit is off or the peer has no IP address).
func (d *Decider) admit(req *Request, c Credential) (netip.Addr, error) {
	if d.fails == nil {
		return netip.Addr{}, nil
	}
	addr := guard.AddrKey(d.ClientAddr(req))
	if !addr.IsValid() {
		return addr, nil
	}
	if ok, retry := d.fails.Admit(addr, credentialID(c), req.Time); !ok && (c.Signature != "" || !d.opt.Auth.Cached(c.Credential)) {
		return addr, &TooManyFailuresError{RetryAfter: retry}
	}
	return addr, nil
}

// settle records an authentication's outcome for the failed-authentication
// limit: a proved credential keeps working from addr, a refused one counts.
func (d *Decider) settle(addr netip.Addr, c Credential, err error, now time.Time) {
	if !addr.IsValid() {
		return
	}
	switch {
	case err == nil:
		d.fails.Prove(addr, credentialID(c))
	case errors.Is(err, keys.ErrInvalidCredential), errors.Is(err, keys.ErrBadSignature), errors.Is(err, keys.ErrNotSignable):
		d.fails.Fail(addr, now)
	}
}

// AdmitLogin applies the client address's failed-authentication limit to a
// password login for username (seed 003), before the password is checked:
// a password guess is a failed authentication like a guessed key. The
// caller reports the outcome with settle: true proves the login from this
// address, false counts a wrong password; errors of other kinds (the store,
// a busy sidecar) are not reported.
func (d *Decider) AdmitLogin(req *Request, username string) (settle func(ok bool), err error) {
	c := Credential{Credential: keys.Credential{Secret: "login:" + username}}
	addr, err := d.admit(req, c)
	if err != nil {
		return nil, err
	}
	return func(ok bool) {
		var outcome error
		if !ok {
			outcome = keys.ErrInvalidCredential
		}
		d.settle(addr, c, outcome, req.Time)
	}, nil
}

// credentialID names a credential for the limiter's memory of proved ones:
// the access key of a signed request, else the secret (stored only as a
// keyed fingerprint).
func credentialID(c Credential) string {
	if c.Signature != "" {
		return c.AccessKey
	}
	return c.Secret
}

// Now is the Decider's clock: fronts use it so that every part of a
// request sees the same time source.
func (d *Decider) Now() time.Time { return d.opt.Now() }

// TSSkew is how far a ts parameter may be from now.
func (d *Decider) TSSkew() time.Duration { return d.opt.TSSkew }

// Request is the facts of a request a decision needs, whichever front
// received it.
type Request struct {
	Method string
	// Path is the decoded path route rules are matched against.
	Path string
	// RawPath is the path as sent, percent-encoding kept: signatures cover it.
	RawPath  string
	RawQuery string
	Header   http.Header
	// RemoteAddr is the peer's address (host:port).
	RemoteAddr string
	// Time is the instant of the request; it picks the quota window.
	Time time.Time
}

// RequestOf returns the facts of an HTTP request received at now.
func RequestOf(r *http.Request, now time.Time) Request {
	return Request{
		Method:     r.Method,
		Path:       r.URL.Path,
		RawPath:    RequestPath(r),
		RawQuery:   r.URL.RawQuery,
		Header:     r.Header,
		RemoteAddr: r.RemoteAddr,
		Time:       now,
	}
}

// Verdict is an admitted request: who it is, what it needed, what it was
// charged and what the caller should be told.
type Verdict struct {
	Principal keys.Principal
	Route     Route
	Period    quota.Period
	Result    quota.Result
	// Counted is false when the request was admitted uncounted because the
	// store was unreachable (FailOpen).
	Counted bool
	// Bearer is set when the credential was an Authorization bearer token,
	// which then must not reach the upstream.
	Bearer bool
}

// Decide authenticates a request, checks the permission its route needs and
// charges its cost in one store round trip. A refusal is an error that
// Classify turns into the answer every front gives; it changes nothing.
func (d *Decider) Decide(ctx context.Context, req *Request) (Verdict, error) {
	cred, err := ParseCredential(req.Header)
	if err != nil {
		return Verdict{}, err
	}
	sctx := withLazyDeadline(ctx, time.Now().Add(d.opt.StoreTimeout))
	defer sctx.release()
	p, nonce, err := d.verify(sctx, req, cred)
	if err != nil {
		return Verdict{}, err
	}
	v := Verdict{Principal: p, Route: d.opt.Rules.Match(req.Method, req.Path), Period: PlanPeriod(p.Plan), Bearer: cred.Bearer}
	if !p.Can(v.Route.Permission) {
		return v, &keys.PermissionError{Need: v.Route.Permission}
	}
	res, err := d.charge(sctx, p, v.Period, v.Route.Cost, req.Time, nonce)
	switch {
	case err == nil:
		v.Result, v.Counted = res, true
	// A signed request whose one-time use could not be recorded is refused
	// even in open mode: its signature could be replayed.
	case d.opt.FailOpen && errors.Is(err, quota.ErrUnavailable) && nonce.value == "" && ctx.Err() == nil:
		d.failOpen(p, err)
	default:
		return v, err
	}
	return v, nil
}

// Authenticate turns a self-served request's credential into a principal
// the store has confirmed. A signed request's signature is spent here (a
// cost-0 charge carrying the nonce): self-served routes charge nothing.
func (d *Decider) Authenticate(ctx context.Context, req *Request) (keys.Principal, error) {
	cred, err := ParseCredential(req.Header)
	if err != nil {
		return keys.Principal{}, err
	}
	return d.AuthenticateCredential(ctx, req, cred)
}

// AuthenticateCredential is Authenticate for a credential found elsewhere
// than in the headers (seed 003's apikey form field).
func (d *Decider) AuthenticateCredential(ctx context.Context, req *Request, cred Credential) (keys.Principal, error) {
	ctx, cancel := context.WithTimeout(ctx, d.opt.StoreTimeout)
	defer cancel()
	p, nonce, err := d.verify(ctx, req, cred)
	if err != nil {
		return keys.Principal{}, err
	}
	if nonce.value != "" {
		if _, err := d.charge(ctx, p, PlanPeriod(p.Plan), 0, d.opt.Now(), nonce); err != nil {
			return keys.Principal{}, err
		}
	}
	if p.Stale {
		// Self-served answers need the store anyway; do not act on a
		// principal the store could not confirm.
		return keys.Principal{}, errors.Join(keys.ErrUnavailable, errors.New("principal not confirmed"))
	}
	return p, nil
}

// verify authenticates a credential; for a signed request it also returns
// the nonce the caller must spend with its charge (see signing.go).
func (d *Decider) verify(ctx context.Context, req *Request, c Credential) (p keys.Principal, nonce signedNonce, err error) {
	addr, err := d.admit(req, c)
	if err != nil {
		return p, nonce, err
	}
	if d.fails != nil {
		defer func() { d.settle(addr, c, err, req.Time) }()
	}
	start := time.Now()
	if c.Signature != "" {
		p, nonce, err = d.verifySigned(ctx, req, c)
	} else {
		p, err = d.opt.Auth.Authenticate(ctx, c.Credential)
	}
	d.opt.Metrics.Store("authenticate", time.Since(start), StoreFault(ctx, err, keys.ErrUnavailable))
	if err == nil && d.opt.Toucher != nil {
		d.opt.Toucher.Touch(p.Key.Ref())
	}
	return p, nonce, err
}

// charge counts cost against the principal's key and organization, spending
// a signed request's nonce (if any) in the same round trip; a used nonce
// fails with quota.ErrReplay and counts nothing.
func (d *Decider) charge(ctx context.Context, p keys.Principal, period quota.Period, cost int64, now time.Time, nonce signedNonce) (quota.Result, error) {
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
	if cost > 0 || nonce.value == "" {
		// Self-served routes (cost 0 with a nonce, or none at all) are not
		// rate limited; data-path requests, free ones included, are.
		c.RateLimits = rateLimits(p)
	}
	if d.opt.RemoteCounter {
		c.Token = d.tokenPrefix + strconv.FormatUint(d.tokenSeq.Add(1), 36)
	}
	start := time.Now()
	res, err := d.opt.Counter.Charge(ctx, c)
	d.opt.Metrics.Store("charge", time.Since(start), StoreFault(ctx, err, quota.ErrUnavailable))
	if err == nil {
		d.opt.Metrics.Quota(p.Key.OrgID, period.String(), res.OrgUsed, orgMax)
	}
	return res, err
}

// Policy names of the rate limits, as headers show them.
const (
	PolicyKeyRate = "key-rate"
	PolicyOrgRate = "org-rate"
)

// rateLimits are the rate limits that apply to a principal's requests, for
// the charge; nil when none does (no allocation).
func rateLimits(p keys.Principal) []quota.RateLimit {
	key, org := p.RateLimits()
	if key == nil && org == nil {
		return nil
	}
	out := make([]quota.RateLimit, 0, 2)
	if key != nil {
		out = append(out, quota.RateLimit{Name: PolicyKeyRate, Scope: quota.ScopeKey, Requests: key.Requests, Per: key.Per, Burst: key.Burst, Shadow: key.Shadow})
	}
	if org != nil {
		out = append(out, quota.RateLimit{Name: PolicyOrgRate, Scope: quota.ScopeOrg, Requests: org.Requests, Per: org.Per, Burst: org.Burst, Shadow: org.Shadow})
	}
	return out
}

// failOpen records an uncounted admission during a store outage.
func (d *Decider) failOpen(p keys.Principal, err error) {
	d.opt.Metrics.FailOpen()
	now := time.Now().UnixNano()
	last := d.lastFailOpenLog.Load()
	if now-last >= int64(10*time.Second) && d.lastFailOpenLog.CompareAndSwap(last, now) {
		d.log.Warn("store unreachable: admitting verified keys uncounted (KEYGATE_FAILURE_MODE=open)",
			zap.String("org_id", p.Key.OrgID), zap.Error(err))
	}
}

// StoreFault reports whether err is the store's fault: unavailable, and not
// because the caller's context was cancelled (the client went away).
func StoreFault(ctx context.Context, err, unavailable error) bool {
	return errors.Is(err, unavailable) && !errors.Is(ctx.Err(), context.Canceled)
}

// PlanPeriod returns the plan's period. Plans are validated when created, so
// a bad one cannot occur; month is the safe reading if it does.
func PlanPeriod(pl keys.Plan) quota.Period {
	period, err := quota.ParsePeriod(pl.Period)
	if err != nil {
		return quota.PeriodMonth
	}
	return period
}

// SetHeaders writes what an admitted request's caller should see: the IETF
// RateLimit-Policy header (draft-ietf-httpapi-ratelimit-headers) listing
// every policy that applies — the key's and the organization's quotas and
// rate limits, shadow ones included — and RateLimit for the enforced one
// closest to refusing (the fewest units left). Unlimited principals, and
// requests admitted uncounted, get none.
func (v *Verdict) SetHeaders(h http.Header, now time.Time) {
	if !v.Counted {
		return
	}
	p, res := &v.Principal, v.Result
	// Both values are built on the stack and become one string.
	var policyBuf [192]byte
	var closestBuf [96]byte
	policy, closest := policyBuf[:0], closestBuf[:0]
	best := int64(-1)
	add := func(name string, q, window int64, remaining int64, reset time.Duration, enforced bool) {
		if len(policy) > 0 {
			policy = append(policy, ", "...)
		}
		policy = appendPolicy(policy, name, q, window)
		if enforced && (best < 0 || remaining < best) {
			best = remaining
			closest = appendState(closest[:0], name, remaining, reset)
		}
	}
	orgMax, _ := p.Org.RequestQuota(p.Plan)
	keyMax := p.Key.KeyMax()
	w := res.Window
	var window int64
	var reset time.Duration
	if !w.End.IsZero() {
		window = int64(w.End.Sub(w.Start) / time.Second)
		reset = w.Remaining(now)
	}
	if keyMax >= 0 {
		add("key", keyMax, window, max(keyMax-res.KeyUsed, 0), reset, true)
	}
	if orgMax >= 0 {
		add("org", orgMax, window, max(orgMax-res.OrgUsed, 0), reset, true)
	}
	for _, st := range res.RateLimits {
		add(st.Limit.Name, st.Limit.Requests, int64(st.Limit.Per/time.Second), st.Remaining, st.Reset, !st.Limit.Shadow)
	}
	if len(policy) == 0 {
		return
	}
	// Canonical names, set directly: Header.Set would canonicalise them on
	// every request.
	both := string(append(policy, closest...))
	vals := &[2]string{both[:len(policy)], both[len(policy):]}
	h["Ratelimit-Policy"] = vals[0:1:1]
	if len(closest) > 0 {
		h["Ratelimit"] = vals[1:2:2]
	}
}

// WouldLimit names the shadow limits that would have refused the request
// (for the access log and metrics); empty when none.
func (v *Verdict) WouldLimit() string {
	var out string
	for _, st := range v.Result.RateLimits {
		if st.WouldLimit {
			if out != "" {
				out += ","
			}
			out += st.Limit.Name
		}
	}
	return out
}

// appendPolicy appends `"name";q=Q;w=W` (no w for a window that never ends).
func appendPolicy(b []byte, name string, q, window int64) []byte {
	b = append(b, '"')
	b = append(b, name...)
	b = append(b, `";q=`...)
	b = strconv.AppendInt(b, q, 10)
	if window > 0 {
		b = append(b, ";w="...)
		b = strconv.AppendInt(b, window, 10)
	}
	return b
}

// appendState appends `"name";r=R;t=T`, T in whole seconds rounded up.
func appendState(b []byte, name string, remaining int64, reset time.Duration) []byte {
	b = append(b, '"')
	b = append(b, name...)
	b = append(b, `";r=`...)
	b = strconv.AppendInt(b, remaining, 10)
	if reset > 0 {
		b = append(b, ";t="...)
		b = strconv.AppendInt(b, int64((reset+time.Second-1)/time.Second), 10)
	}
	return b
}
