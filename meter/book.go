// Package meter books metered usage — the request body bytes (ingress), the
// response body bytes (egress) and what the upstream reports in
// X-Keygate-Usage — into the quota Counter off the request path, in
// batches. It holds the meter names every front shows.
package meter

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/keygate/keygate/metrics"
	"github.com/keygate/keygate/quota"
)

// Meters keygate counts itself. Upstream-reported meters may use any other
// name of lower-case letters, digits and underscores.
const (
	Requests = "requests"
	Ingress  = "ingress"
	Egress   = "egress"
)

// flushInterval is how often booked meter deltas are written to the
// store. Meters are bytes and upstream-reported amounts, not the request
// quota, so they are batched: one store round trip per organization per
// interval instead of one per request.
const flushInterval = time.Second

type usageKey struct {
	org   string
	meter quota.Meter
	// sec is the second of the requests, so each flush books into the
	// windows the requests belonged to.
	sec int64
}

// usageVal is a pending delta and the limits of the plan it was booked
// under (the principal's plan.Limits, kept by reference: no copy, no store
// read), from which the flush sets the keygate_quota_limit gauges.
type usageVal struct {
	delta  int64
	limits map[string]int64
}

// Options configure a Book. Counter is required.
type Options struct {
	Counter quota.Counter
	// StoreTimeout bounds each flush's store call (default 250ms).
	StoreTimeout time.Duration
	Log          *zap.Logger
	Metrics      *metrics.Metrics
}

// Book accumulates meter deltas between flushes. Safe for concurrent use;
// create it with NewBook.
type Book struct {
	opt     Options
	log     *zap.Logger
	mu      sync.Mutex
	pending map[usageKey]usageVal
}

// NewBook returns an empty Book writing to o.Counter.
func NewBook(o Options) *Book {
	if o.Counter == nil {
		panic("meter.NewBook: Options.Counter is required")
	}
	if o.StoreTimeout <= 0 {
		o.StoreTimeout = 250 * time.Millisecond
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	return &Book{opt: o, log: o.Log.Named("meter"), pending: make(map[usageKey]usageVal)}
}

// Add books delta for org's meter m at at; limits are the org's plan limits
// by meter name (may be nil).
func (b *Book) Add(org string, m quota.Meter, delta int64, at time.Time, limits map[string]int64) {
	if delta == 0 {
		return
	}
	k := usageKey{org: org, meter: m, sec: at.Unix()}
	b.mu.Lock()
	v := b.pending[k]
	sum, overflow := addInt64(v.delta, delta)
	if !overflow {
		b.pending[k] = usageVal{delta: sum, limits: limits}
	}
	b.mu.Unlock()
	if overflow {
		b.log.Warn("metered usage would overflow; this delta is dropped", zap.String("org_id", org), zap.String("meter", m.Name), zap.Int64("delta", delta))
	}
}

// take returns and clears the pending deltas.
func (b *Book) take() map[usageKey]usageVal {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.pending) == 0 {
		return nil
	}
	out := b.pending
	b.pending = make(map[usageKey]usageVal, len(out))
	return out
}

// Run writes booked meter usage to the store every second until ctx is
// done, then once more. A failed write is dropped and logged rather than
// retried: a retry after a lost reply would book twice.
func (b *Book) Run(ctx context.Context) {
	t := time.NewTicker(flushInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			b.Flush(context.WithoutCancel(ctx))
			return
		case <-t.C:
			b.Flush(ctx)
		}
	}
}

// Flush writes booked meter usage to the store now: one Add per
// organization (more only when its deltas fall in different windows),
// whose returned totals set the usage gauges (and the plan's limits the
// limit gauges) of the meters booked. Deltas of one meter in one window
// are booked together, dated by their latest second: a flush spans two
// seconds of requests, which would otherwise cost two store calls per
// organization. The organizations' Adds are sent concurrently, so that a
// store that pipelines concurrent calls (rediscounter) carries many in
// one round trip.
func (b *Book) Flush(ctx context.Context) {
	type group struct {
		org string
		sec int64
	}
	type batch struct {
		deltas []quota.MeterDelta
		limits map[string]int64
	}
	type inWindow struct {
		org, window string
		meter       quota.Meter
	}
	type merged struct {
		sec int64
		usageVal
	}
	byWindow := make(map[inWindow]merged)
	var apart []usageKey // deltas whose sum with others would overflow
	pending := b.take()
	for k, v := range pending {
		wk := inWindow{org: k.org, window: k.meter.Period.Window(time.Unix(k.sec, 0)).ID, meter: k.meter}
		m, ok := byWindow[wk]
		if !ok {
			byWindow[wk] = merged{sec: k.sec, usageVal: v}
			continue
		}
		sum, overflow := addInt64(m.delta, v.delta)
		if overflow {
			apart = append(apart, k)
			continue
		}
		m.delta = sum
		if k.sec > m.sec {
			m.sec, m.limits = k.sec, v.limits
		}
		byWindow[wk] = m
	}
	batches := make(map[group]*batch)
	add := func(org string, sec int64, m quota.Meter, v usageVal) {
		g := group{org, sec}
		bt := batches[g]
		if bt == nil {
			bt = &batch{}
			batches[g] = bt
		}
		bt.deltas = append(bt.deltas, quota.MeterDelta{Meter: m, Delta: v.delta})
		if v.limits != nil {
			bt.limits = v.limits
		}
	}
	for wk, m := range byWindow {
		add(wk.org, m.sec, wk.meter, m.usageVal)
	}
	for _, k := range apart {
		add(k.org, k.sec, k.meter, pending[k])
	}
	// Per organization, oldest second first, so a gauge ends with the
	// latest total.
	byOrg := make(map[string][]group)
	for g := range batches {
		byOrg[g.org] = append(byOrg[g.org], g)
	}
	// The Adds go out together and wait behind one another in the store's
	// pipelines: each gets the flush's deadline, half the flush interval,
	// at least the store timeout, so that a store slow for one timeout
	// does not fail them all.
	timeout := max(b.opt.StoreTimeout, flushInterval/2)
	var wg sync.WaitGroup
	sem := make(chan struct{}, flushConcurrency)
	for _, groups := range byOrg {
		slices.SortFunc(groups, func(a, b group) int { return cmp.Compare(a.sec, b.sec) })
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			for _, g := range groups {
				bt := batches[g]
				b.book(ctx, timeout, g.org, g.sec, bt.deltas, bt.limits)
			}
		}()
	}
	wg.Wait()
}

// flushConcurrency bounds the organizations one Flush books at once.
const flushConcurrency = 64

// book writes one organization's deltas dated sec within timeout and sets
// the gauges from the totals.
func (b *Book) book(ctx context.Context, timeout time.Duration, org string, sec int64, deltas []quota.MeterDelta, limits map[string]int64) {
	cctx, cancel := context.WithTimeout(ctx, timeout)
	start := time.Now()
	totals, err := b.opt.Counter.Add(cctx, org, time.Unix(sec, 0), deltas)
	cancel()
	b.opt.Metrics.Store("add_usage", time.Since(start), errors.Is(err, quota.ErrUnavailable))
	if err != nil {
		b.log.Warn("booking metered usage failed; dropped", zap.String("org_id", org), zap.Int("meters", len(deltas)), zap.Error(err))
		return
	}
	if len(totals) != len(deltas) {
		return // a broken Counter; the store has the truth
	}
	for i, d := range deltas {
		limit, ok := limits[d.Meter.Name]
		if !ok {
			limit = -1
		}
		b.opt.Metrics.Meter(org, d.Meter.Name, d.Meter.Period.String(), totals[i], limit, time.Unix(sec, 0))
	}
}

// ForName returns the meter an upstream-reported name books into:
// ingress and egress per plan period, anything else a running total.
func ForName(name string, period quota.Period) quota.Meter {
	if name == Ingress || name == Egress {
		return quota.Meter{Name: name, Period: period}
	}
	return quota.Meter{Name: name, Period: quota.PeriodNone}
}

// MaxDelta bounds one reported delta (2^53, 8 PiB of bytes): no sum of a
// flush's deltas can then overflow a counter that is far from its end.
const MaxDelta = 1 << 53

// ParseItem parses one item of X-Keygate-Usage, "meter=+123" or "meter=-5".
func ParseItem(item string) (string, int64, bool) {
	name, num, ok := strings.Cut(strings.TrimSpace(item), "=")
	if !ok || !ValidName(name) || name == Requests {
		return "", 0, false
	}
	d, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
	if err != nil || d > MaxDelta || d < -MaxDelta {
		return "", 0, false
	}
	return name, d, true
}

// ValidName reports whether s may name a meter: 1 to 64 lower-case
// letters, digits and underscores.
func ValidName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_') {
			return false
		}
	}
	return true
}

// addInt64 adds without wrapping: overflow reports a sum out of range.
func addInt64(a, b int64) (sum int64, overflow bool) {
	sum = a + b
	return sum, (b > 0 && sum < a) || (b < 0 && sum > a)
}
