// Package metrics holds keygate's Prometheus metrics and the values of
// their labels (the outcome of a request, the store operations), so that
// every front and the decision record into one set of series. It imports no
// other keygate package but quota (for periods), and nothing of HTTP.
package metrics

import (
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/keygate/keygate/quota"
)

// ReservedOrg reports whether id is one of the org label values the
// metrics reserve ("none", "other"): no organization may be called so.
func ReservedOrg(id string) bool { return id == orgNone || id == orgOther }

// orgOther is the org label of organizations past the cardinality cap, and
// orgNone that of requests without an authenticated organization.
const (
	orgOther = "other"
	orgNone  = "none"
)

// Outcomes of a request: the values of the outcome label of
// keygate_requests_total and of the access log's outcome field.
const (
	OutcomeAdmitted          = "admitted"
	OutcomeNoCredential      = "no_credential"
	OutcomeInvalidCredential = "invalid_credential"
	OutcomeForbidden         = "forbidden"
	OutcomeQuotaExceeded     = "quota_exceeded"
	OutcomeRateLimited       = "rate_limited"
	OutcomeStoreUnavailable  = "store_unavailable"
	OutcomeUpstreamError     = "upstream_error"
	OutcomeUpstreamTimeout   = "upstream_timeout"
	OutcomeBadRequest        = "bad_request"
	OutcomeInternal          = "internal_error"
	// OutcomeClientClosed: the client went away before keygate could
	// answer (status 499, as nginx logs it); not a store or upstream fault.
	OutcomeClientClosed = "client_closed"
)

// Outcomes lists every value of the outcome label: the data path's and
// those of the self-served routes.
var Outcomes = []string{
	OutcomeAdmitted, OutcomeNoCredential, OutcomeInvalidCredential, OutcomeForbidden,
	OutcomeQuotaExceeded, OutcomeStoreUnavailable, OutcomeUpstreamError, OutcomeUpstreamTimeout,
	OutcomeBadRequest, OutcomeInternal, OutcomeClientClosed, OutcomeRateLimited,
}

// Fronts: the values of the front label of keygate_requests_total and of
// the access log's front field, one per surface that decides requests.
const (
	// FrontProxy is the data listener: the proxy and the self-served routes.
	FrontProxy = "proxy"
	// FrontAuthzHTTP is the HTTP authorization endpoint (KEYGATE_AUTHZ_ADDR).
	FrontAuthzHTTP = "authz_http"
	// FrontAuthzGRPC is Envoy's ext_authz over gRPC (KEYGATE_AUTHZ_GRPC_ADDR).
	FrontAuthzGRPC = "authz_grpc"
)

// Fronts lists every value of the front label.
var Fronts = []string{FrontProxy, FrontAuthzHTTP, FrontAuthzGRPC}

// meterRequests is the meter name of the request quota in the usage gauges.
const meterRequests = "requests"

// storeOps are the values of the op label of the store metrics.
var storeOps = []string{"authenticate", "charge", "add_usage"}

// authLookupResults are the results keys.AuthOptions.OnLookup reports.
var authLookupResults = []string{"hit", "miss", "stale"}

// changeLogEvents are the events keys.AuthOptions.OnChangeLog reports.
var changeLogEvents = []string{"break", "catch_up", "forget"}

// Metrics are keygate's Prometheus metrics. Build them with NewMetrics on a
// registry of the caller's; a nil *Metrics records nothing. Safe for
// concurrent use.
type Metrics struct {
	requests         *prometheus.CounterVec
	requestDuration  prometheus.Histogram
	upstreamDuration prometheus.Histogram
	storeDuration    *prometheus.HistogramVec
	storeErrors      *prometheus.CounterVec
	quotaUsage       *prometheus.GaugeVec
	quotaLimit       *prometheus.GaugeVec
	quotaRatio       *prometheus.GaugeVec
	failOpenAdmits   prometheus.Counter
	wouldLimit       *prometheus.CounterVec
	authCache        *prometheus.CounterVec
	// Children resolved once, for the calls every request makes.
	storeObs         map[string]prometheus.Observer
	authObs          map[string]prometheus.Counter
	revocations      prometheus.Counter
	revocationLag    prometheus.Histogram
	leaseOutstanding prometheus.Gauge
	leaseRenewals    *prometheus.CounterVec
	// rateLease* are the rate-limit leases' (quota/lease ratelimit.go).
	rateLeaseOutstanding prometheus.Gauge
	rateLeaseRenewals    *prometheus.CounterVec
	rateLeaseReturned    prometheus.Counter
	leaseReturned        prometheus.Counter
	leaseLost            prometheus.Counter
	revalidations        prometheus.Counter
	changeLog            *prometheus.CounterVec
	// cacheStats reads the credential cache's size (AuthCacheStats).
	cacheStats atomic.Pointer[func() (int, int64)]

	orgs *orgLabels

	// meterMu guards meterAt: when each upstream-reported, ingress or egress
	// usage series was last set (by the usage flush, not per request).
	meterMu sync.Mutex
	meterAt map[meterSeries]time.Time

	now func() time.Time
}

type meterSeries struct{ org, meter, period string }

// NewMetrics registers keygate's metrics on reg. maxOrgs caps the number of
// distinct org label values; later organizations are folded into "other".
func NewMetrics(reg prometheus.Registerer, maxOrgs int) *Metrics {
	latency := []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keygate_requests_total",
			Help: "Requests handled, by front, organization, outcome and status class.",
		}, []string{"front", "org", "outcome", "status_class"}),
		requestDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "keygate_request_duration_seconds",
			Help:    "Time from receiving a request to the end of its response, upstream included.",
			Buckets: latency,
		}),
		upstreamDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "keygate_upstream_duration_seconds",
			Help:    "Time the upstream took to answer with response headers.",
			Buckets: latency,
		}),
		storeDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "keygate_store_duration_seconds",
			Help:    "Duration of store calls on the request path, by operation.",
			Buckets: latency,
		}, []string{"op"}),
		storeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keygate_store_errors_total",
			Help: "Store calls that failed because the store was unreachable or too slow, by operation.",
		}, []string{"op"}),
		quotaUsage: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "keygate_quota_usage",
			Help: "Usage of a meter by an organization in the current window of its period, as last seen by this sidecar.",
		}, []string{"org", "meter", "period"}),
		quotaLimit: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "keygate_quota_limit",
			Help: "Limit of a meter for an organization per window of its period.",
		}, []string{"org", "meter", "period"}),
		quotaRatio: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "keygate_quota_usage_ratio",
			Help: "Share of the organization's request quota used in the current window (0 to 1).",
		}, []string{"org"}),
		failOpenAdmits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "keygate_fail_open_admits_total",
			Help: "Requests admitted without being counted because the store was unreachable (KEYGATE_FAILURE_MODE=open).",
		}),
		wouldLimit: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keygate_rate_limit_would_limit_total",
			Help: "Requests a shadow rate limit would have refused (admitted all the same), by policy.",
		}, []string{"policy"}),
		authCache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keygate_auth_cache_lookups_total",
			Help: "Credential lookups by result: hit (local cache), miss (store read), stale (cache used during a store outage).",
		}, []string{"result"}),
		revocations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "keygate_revocations_received_total",
			Help: "Revocations received from the store and applied to the local cache.",
		}),
		revocationLag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "keygate_revocation_lag_seconds",
			Help:    "Time from a revocation's publication to its application on this sidecar.",
			Buckets: []float64{.001, .005, .01, .05, .1, .25, .5, 1, 2, 5},
		}),
		revalidations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "keygate_auth_cache_revalidations_total",
			Help: "Background reads of the store's change log that confirmed every cached credential at once.",
		}),
		changeLog: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keygate_auth_change_log_events_total",
			Help: "Breaks of the change log's follow and how it resumed: catch_up (from the last change seen) or forget (the cache was forgotten).",
		}, []string{"event"}),
		leaseOutstanding: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keygate_quota_lease_outstanding_units",
			Help: "Units of quota this sidecar holds reserved in Redis and has not spent yet (KEYGATE_QUOTA_LEASES=auto).",
		}),
		leaseRenewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keygate_quota_lease_renewals_total",
			Help: "Reservations of a block of an organization's quota, by result: granted, refused (the quota had too few free units) or failed (the store did not answer).",
		}, []string{"result"}),
		leaseReturned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "keygate_quota_lease_returned_units_total",
			Help: "Units of quota given back unspent: blocks gone idle, at shutdown, when a quota nears its end or its max changed.",
		}),
		leaseLost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "keygate_quota_lease_lost_units_total",
			Help: "Units of quota counted as used without being admitted: reservations whose reply was lost, blocks that could not be given back at shutdown (at most; the reservation may not have been booked).",
		}),
		rateLeaseOutstanding: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keygate_rate_lease_outstanding_slots",
			Help: "Slots of rate limits this sidecar holds reserved in Redis and has not spent yet, including those that lapsed since the block's last charge until it is given back (KEYGATE_QUOTA_LEASES=auto).",
		}),
		rateLeaseRenewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keygate_rate_lease_renewals_total",
			Help: "Reservations of a block of a rate limit's slots, by result: granted, refused (the limit had no room) or failed (the store did not answer).",
		}, []string{"result"}),
		rateLeaseReturned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "keygate_rate_lease_returned_slots_total",
			Help: "Slots of rate limits given back unspent: blocks gone idle, at shutdown, or given back to be reserved again.",
		}),
		orgs:    &orgLabels{max: maxOrgs, seen: make(map[string]*orgSeen)},
		meterAt: make(map[meterSeries]time.Time),
		now:     time.Now,
	}
	version, revision := buildVersion()
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "keygate_build_info",
		Help: "Always 1; labels describe the running build.",
	}, []string{"version", "revision", "goversion"})
	build.WithLabelValues(version, revision, goVersion()).Set(1)
	// Series that dashboards and alerts rate() over exist from the start,
	// at zero, so the first error or lookup is an increase, not a new series.
	m.storeObs = make(map[string]prometheus.Observer, len(storeOps))
	for _, op := range storeOps {
		m.storeObs[op] = m.storeDuration.WithLabelValues(op)
		m.storeErrors.WithLabelValues(op)
	}
	m.authObs = make(map[string]prometheus.Counter, len(authLookupResults))
	for _, r := range authLookupResults {
		m.authObs[r] = m.authCache.WithLabelValues(r)
	}
	for _, e := range changeLogEvents {
		m.changeLog.WithLabelValues(e)
	}
	cacheEntries := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "keygate_auth_cache_entries",
		Help: "Credentials held by the local cache.",
	}, func() float64 { n, _ := m.authCacheStats(); return float64(n) })
	cacheBytes := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "keygate_auth_cache_bytes",
		Help: "Heap the local credential cache holds, as it estimates it against KEYGATE_AUTH_CACHE_BYTES.",
	}, func() float64 { _, b := m.authCacheStats(); return float64(b) })
	reg.MustRegister(m.requests, m.requestDuration, m.upstreamDuration, m.storeDuration, m.storeErrors,
		quotaCollector{m}, m.quotaLimit, m.failOpenAdmits, m.wouldLimit, m.authCache, m.revocations, m.revocationLag,
		m.revalidations, m.changeLog, cacheEntries, cacheBytes, build,
		m.leaseOutstanding, m.leaseRenewals, m.leaseReturned, m.leaseLost,
		m.rateLeaseOutstanding, m.rateLeaseRenewals, m.rateLeaseReturned)
	for _, r := range []string{"granted", "refused", "failed"} {
		m.leaseRenewals.WithLabelValues(r)
		m.rateLeaseRenewals.WithLabelValues(r)
	}
	return m
}

func buildVersion() (version, revision string) {
	version, revision = "devel", "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" {
			version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				revision = s.Value
			}
		}
	}
	return version, revision
}

func goVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		return bi.GoVersion
	}
	return "unknown"
}

// orgLabels caps the org label's cardinality.
type orgLabels struct {
	max  int
	mu   sync.RWMutex
	seen map[string]*orgSeen
}

// orgSeen is what the metrics know of one labelled organization: when its
// request usage was last set, and under which period.
type orgSeen struct {
	requestsAt     atomic.Int64 // Unix nanoseconds; 0 = never
	requestsPeriod atomic.Pointer[string]
	// The series the organization's last request and last charge used,
	// so that the next one with the same labels skips the label lookups.
	lastRequest atomic.Pointer[requestSeries]
	lastQuota   atomic.Pointer[quotaSeries]
}

// requestSeries is the keygate_requests_total child of one label set.
type requestSeries struct {
	front, outcome, class string
	c                     prometheus.Counter
}

// quotaSeries are an organization's request-quota gauges under one period.
type quotaSeries struct {
	period              string
	usage, limit, ratio prometheus.Gauge
}

// label returns org if it is (or can become) one of the first max
// organizations seen, else "other".
func (o *orgLabels) label(org string) string {
	l, _ := o.lookup(org)
	return l
}

// lookup is label plus the organization's state; nil for "none" and
// "other", which have no usage gauges.
func (o *orgLabels) lookup(org string) (string, *orgSeen) {
	if org == "" {
		return orgNone, nil
	}
	o.mu.RLock()
	s, ok := o.seen[org]
	o.mu.RUnlock()
	if ok {
		return org, s
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if s, ok := o.seen[org]; ok {
		return org, s
	}
	if len(o.seen) >= o.max {
		return orgOther, nil
	}
	s = &orgSeen{}
	o.seen[org] = s
	return org, s
}

// get returns a labelled organization's state, or nil.
func (o *orgLabels) get(org string) *orgSeen {
	o.mu.RLock()
	defer o.mu.RUnlock()
	return o.seen[org]
}

func statusClass(status int) string {
	switch {
	case status >= 500:
		return "5xx"
	case status >= 400:
		return "4xx"
	case status >= 300:
		return "3xx"
	case status >= 200:
		return "2xx"
	default:
		return "1xx"
	}
}

// Request counts a finished request of a front (Front*) and its duration.
func (m *Metrics) Request(front, org, outcome string, status int, d time.Duration) {
	if m == nil {
		return
	}
	l, seen := m.orgs.lookup(org)
	class := statusClass(status)
	if seen == nil {
		m.requests.WithLabelValues(front, l, outcome, class).Inc()
	} else if rs := seen.lastRequest.Load(); rs != nil && rs.front == front && rs.outcome == outcome && rs.class == class {
		rs.c.Inc()
	} else {
		rs := &requestSeries{front: front, outcome: outcome, class: class, c: m.requests.WithLabelValues(front, l, outcome, class)}
		seen.lastRequest.Store(rs)
		rs.c.Inc()
	}
	m.requestDuration.Observe(d.Seconds())
}

// Upstream observes the upstream's time to response headers.
func (m *Metrics) Upstream(d time.Duration) {
	if m != nil {
		m.upstreamDuration.Observe(d.Seconds())
	}
}

// Store observes a store call on the request path; unavailable counts it
// as a store error.
func (m *Metrics) Store(op string, d time.Duration, unavailable bool) {
	if m == nil {
		return
	}
	if o, ok := m.storeObs[op]; ok {
		o.Observe(d.Seconds())
	} else {
		m.storeDuration.WithLabelValues(op).Observe(d.Seconds())
	}
	if unavailable {
		m.storeErrors.WithLabelValues(op).Inc()
	}
}

// Quota records an organization's request usage and limit after a charge.
func (m *Metrics) Quota(org, period string, used, limit int64) {
	if m == nil {
		return
	}
	l, seen := m.orgs.lookup(org)
	if seen == nil {
		return // a folded gauge would mix organizations' values
	}
	qs := seen.lastQuota.Load()
	if qs == nil || qs.period != period || (limit >= 0 && qs.limit == nil) {
		qs = &quotaSeries{period: period, usage: m.quotaUsage.WithLabelValues(l, meterRequests, period)}
		if limit >= 0 { // an unlimited organization has no limit series
			qs.limit, qs.ratio = m.quotaLimit.WithLabelValues(l, meterRequests, period), m.quotaRatio.WithLabelValues(l)
		}
		seen.lastQuota.Store(qs)
	}
	qs.usage.Set(float64(used))
	if limit >= 0 {
		qs.limit.Set(float64(limit))
		if limit > 0 {
			qs.ratio.Set(float64(used) / float64(limit))
		} else {
			qs.ratio.Set(1)
		}
	}
	if p := seen.requestsPeriod.Load(); p == nil || *p != period {
		p := period // allocated only when the org's period changes
		seen.requestsPeriod.Store(&p)
	}
	seen.requestsAt.Store(m.now().UnixNano())
}

// Meter records a meter's usage as of at (the time of the requests it was
// booked for) and its limit (limit < 0: none).
func (m *Metrics) Meter(org, meter, period string, used, limit int64, at time.Time) {
	if m == nil {
		return
	}
	l := m.orgs.label(org)
	if l == orgOther {
		return
	}
	m.quotaUsage.WithLabelValues(l, meter, period).Set(float64(used))
	if limit >= 0 {
		m.quotaLimit.WithLabelValues(l, meter, period).Set(float64(limit))
	}
	k := meterSeries{l, meter, period}
	m.meterMu.Lock()
	if at.After(m.meterAt[k]) {
		m.meterAt[k] = at
	}
	m.meterMu.Unlock()
}

// quotaCollector collects keygate_quota_usage and keygate_quota_usage_ratio.
// A usage gauge holds the shared counter's value in the window in which this
// sidecar last saw it; once that window of the period has ended (or the
// organization moved to a plan of another period) the counter has reset,
// so the series reads 0 until the sidecar sees the new window's value.
// Without this, a sidecar that served an organization at the end of a
// period would report last period's usage for as long as it gets none of
// that organization's traffic, and the max across sidecars that the rules
// take would keep a quota alert firing after the reset.
type quotaCollector struct{ m *Metrics }

func (c quotaCollector) Describe(ch chan<- *prometheus.Desc) {
	c.m.quotaUsage.Describe(ch)
	c.m.quotaRatio.Describe(ch)
}

func (c quotaCollector) Collect(ch chan<- prometheus.Metric) {
	now := c.m.now()
	requestsReset := map[string]bool{} // by org
	collectLabelled(c.m.quotaUsage, func(mt prometheus.Metric, lv map[string]string) {
		org, meter, period := lv["org"], lv["meter"], lv["period"]
		var at time.Time
		current := true
		if meter == meterRequests {
			if seen := c.m.orgs.get(org); seen != nil {
				if n := seen.requestsAt.Load(); n != 0 {
					at = time.Unix(0, n)
				}
				if p := seen.requestsPeriod.Load(); p != nil && *p != period {
					current = false
				}
			}
		} else {
			c.m.meterMu.Lock()
			at = c.m.meterAt[meterSeries{org, meter, period}]
			c.m.meterMu.Unlock()
		}
		if current && !windowEnded(period, at, now) {
			ch <- mt
			return
		}
		if meter == meterRequests && current {
			requestsReset[org] = true
		}
		ch <- prometheus.MustNewConstMetric(mt.Desc(), prometheus.GaugeValue, 0, org, meter, period)
	})
	collectLabelled(c.m.quotaRatio, func(mt prometheus.Metric, lv map[string]string) {
		if requestsReset[lv["org"]] {
			ch <- prometheus.MustNewConstMetric(mt.Desc(), prometheus.GaugeValue, 0, lv["org"])
			return
		}
		ch <- mt
	})
}

// windowEnded reports whether the window of period that held at has ended
// by now. A period that never resets, or an unknown time, never ends.
func windowEnded(period string, at, now time.Time) bool {
	if at.IsZero() {
		return false
	}
	p, err := quota.ParsePeriod(period)
	if err != nil {
		return false
	}
	end := p.Window(at).End
	return !end.IsZero() && !now.Before(end)
}

// collectLabelled calls f with each metric of v and its label values by name.
func collectLabelled(v *prometheus.GaugeVec, f func(prometheus.Metric, map[string]string)) {
	ch := make(chan prometheus.Metric, 64)
	go func() {
		v.Collect(ch)
		close(ch)
	}()
	for mt := range ch {
		var pb dto.Metric
		if err := mt.Write(&pb); err != nil {
			continue
		}
		lv := make(map[string]string, len(pb.Label))
		for _, l := range pb.Label {
			lv[l.GetName()] = l.GetValue()
		}
		f(mt, lv)
	}
}

// WouldLimit counts a request that shadow rate limits (comma-separated
// policy names) would have refused.
func (m *Metrics) WouldLimit(policies string) {
	if m == nil {
		return
	}
	for _, p := range strings.Split(policies, ",") {
		m.wouldLimit.WithLabelValues(p).Inc()
	}
}

// LeaseOutstanding adds delta to the quota units held unspent (quota/lease's
// Observer, as are the three below).
func (m *Metrics) LeaseOutstanding(delta int64) {
	if m != nil {
		m.leaseOutstanding.Add(float64(delta))
	}
}

// LeaseRenewal counts a reservation by its result.
func (m *Metrics) LeaseRenewal(result string) {
	if m != nil {
		m.leaseRenewals.WithLabelValues(result).Inc()
	}
}

// LeaseReturned counts units given back unspent.
func (m *Metrics) LeaseReturned(n int64) {
	if m != nil {
		m.leaseReturned.Add(float64(n))
	}
}

// LeaseLost counts units counted as used without being admitted.
func (m *Metrics) LeaseLost(n int64) {
	if m != nil && n > 0 {
		m.leaseLost.Add(float64(n))
	}
}

// RateLeaseOutstanding adds delta to the rate-limit slots held unspent.
func (m *Metrics) RateLeaseOutstanding(delta int64) {
	if m != nil {
		m.rateLeaseOutstanding.Add(float64(delta))
	}
}

// RateLeaseRenewal counts a reservation of a rate-limit block by its result.
func (m *Metrics) RateLeaseRenewal(result string) {
	if m != nil {
		m.rateLeaseRenewals.WithLabelValues(result).Inc()
	}
}

// RateLeaseReturned counts rate-limit slots given back unspent.
func (m *Metrics) RateLeaseReturned(n int64) {
	if m != nil && n > 0 {
		m.rateLeaseReturned.Add(float64(n))
	}
}

// FailOpen counts a request admitted uncounted during a store outage.
func (m *Metrics) FailOpen() {
	if m != nil {
		m.failOpenAdmits.Inc()
	}
}

// AuthLookup counts a credential lookup; pass it as keys.AuthOptions.OnLookup.
func (m *Metrics) AuthLookup(result string) {
	if m != nil {
		if c, ok := m.authObs[result]; ok {
			c.Inc()
		} else {
			m.authCache.WithLabelValues(result).Inc()
		}
	}
}

// Revalidation counts a background confirmation of the credential cache;
// pass it as keys.AuthOptions.OnConfirm.
func (m *Metrics) Revalidation() {
	if m != nil {
		m.revalidations.Inc()
	}
}

// ChangeLog counts an event of the change log's follow; pass it as
// keys.AuthOptions.OnChangeLog.
func (m *Metrics) ChangeLog(event string) {
	if m != nil {
		m.changeLog.WithLabelValues(event).Inc()
	}
}

// AuthCacheStats makes the cache gauges read stats (the Authenticator's
// CacheStats).
func (m *Metrics) AuthCacheStats(stats func() (entries int, bytes int64)) {
	if m != nil {
		m.cacheStats.Store(&stats)
	}
}

func (m *Metrics) authCacheStats() (int, int64) {
	if f := m.cacheStats.Load(); f != nil {
		return (*f)()
	}
	return 0, 0
}

// Revocation counts a received revocation and its lag; pass it as
// keys.AuthOptions.OnRevocation.
func (m *Metrics) Revocation(lag time.Duration) {
	if m == nil {
		return
	}
	m.revocations.Inc()
	m.revocationLag.Observe(max(lag, 0).Seconds())
}
