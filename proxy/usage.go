package proxy

import (
	"cmp"
	"context"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/keygate/keygate/quota"
)

// Meters keygate counts itself. Upstream-reported meters may use any other
// name of lower-case letters, digits and underscores.
const (
	meterRequests = "requests"
	meterIngress  = "ingress"
	meterEgress   = "egress"
)

// usageFlushInterval is how often booked meter deltas are written to the
// store. Meters are bytes and upstream-reported amounts, not the request
// quota, so they are batched: one store round trip per organization per
// interval instead of one per request.
const usageFlushInterval = time.Second

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

// usageBook accumulates meter deltas between flushes. Safe for concurrent
// use.
type usageBook struct {
	mu      sync.Mutex
	pending map[usageKey]usageVal
}

func newUsageBook() *usageBook { return &usageBook{pending: make(map[usageKey]usageVal)} }

// add books delta for org's meter m at at; limits are the org's plan limits
// by meter name (may be nil).
func (b *usageBook) add(org string, m quota.Meter, delta int64, at time.Time, limits map[string]int64) {
	if delta == 0 {
		return
	}
	k := usageKey{org: org, meter: m, sec: at.Unix()}
	b.mu.Lock()
	v := b.pending[k]
	b.pending[k] = usageVal{delta: v.delta + delta, limits: limits}
	b.mu.Unlock()
}

// take returns and clears the pending deltas.
func (b *usageBook) take() map[usageKey]usageVal {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.pending) == 0 {
		return nil
	}
	out := b.pending
	b.pending = make(map[usageKey]usageVal, len(out))
	return out
}

// RunUsage writes booked meter usage to the store every second until ctx is
// done, then once more. A failed write is dropped and logged rather than
// retried: a retry after a lost reply would book twice.
func (h *Handler) RunUsage(ctx context.Context) {
	t := time.NewTicker(usageFlushInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			h.FlushUsage(context.WithoutCancel(ctx))
			return
		case <-t.C:
			h.FlushUsage(ctx)
		}
	}
}

// FlushUsage writes booked meter usage to the store now: one Add per
// organization and second, whose returned totals set the usage gauges (and
// the plan's limits the limit gauges) of the meters booked.
func (h *Handler) FlushUsage(ctx context.Context) {
	type group struct {
		org string
		sec int64
	}
	type batch struct {
		deltas []quota.MeterDelta
		limits map[string]int64
	}
	batches := make(map[group]*batch)
	for k, v := range h.usage.take() {
		g := group{k.org, k.sec}
		b := batches[g]
		if b == nil {
			b = &batch{}
			batches[g] = b
		}
		b.deltas = append(b.deltas, quota.MeterDelta{Meter: k.meter, Delta: v.delta})
		if v.limits != nil {
			b.limits = v.limits
		}
	}
	// Oldest second first, so a gauge ends with the latest total.
	order := make([]group, 0, len(batches))
	for g := range batches {
		order = append(order, g)
	}
	slices.SortFunc(order, func(a, b group) int { return cmp.Compare(a.sec, b.sec) })
	for _, g := range order {
		b := batches[g]
		cctx, cancel := context.WithTimeout(ctx, h.opt.StoreTimeout)
		start := time.Now()
		totals, err := h.opt.Counter.Add(cctx, g.org, time.Unix(g.sec, 0), b.deltas)
		cancel()
		h.opt.Metrics.store("add_usage", time.Since(start), errors.Is(err, quota.ErrUnavailable))
		if err != nil {
			h.log.Warn("booking metered usage failed; dropped", zap.String("org_id", g.org), zap.Int("meters", len(b.deltas)), zap.Error(err))
			continue
		}
		if len(totals) != len(b.deltas) {
			continue // a broken Counter; the store has the truth
		}
		for i, d := range b.deltas {
			limit, ok := b.limits[d.Meter.Name]
			if !ok {
				limit = -1
			}
			h.opt.Metrics.meter(g.org, d.Meter.Name, d.Meter.Period.String(), totals[i], limit, time.Unix(g.sec, 0))
		}
	}
}

// bookReportedUsage books the meters the upstream reports in X-Keygate-Usage
// and removes the header before the response reaches the client.
func (h *Handler) bookReportedUsage(resp *http.Response) error {
	values := resp.Header.Values(headerUsage)
	if len(values) == 0 {
		return nil
	}
	resp.Header.Del(headerUsage)
	info, ok := resp.Request.Context().Value(forwardKey{}).(*forwardInfo)
	if !ok {
		return nil
	}
	for _, v := range values {
		for _, item := range strings.Split(v, ",") {
			name, delta, ok := parseUsageItem(item)
			if !ok {
				h.log.Debug("ignoring malformed X-Keygate-Usage item", zap.String("item", item))
				continue
			}
			h.usage.add(info.p.Key.OrgID, reportedMeter(name, info.period), delta, info.at, info.p.Plan.Limits)
		}
	}
	return nil
}

// reportedMeter returns the meter an upstream-reported name books into:
// ingress and egress per plan period, anything else a running total.
func reportedMeter(name string, period quota.Period) quota.Meter {
	if name == meterIngress || name == meterEgress {
		return quota.Meter{Name: name, Period: period}
	}
	return quota.Meter{Name: name, Period: quota.PeriodNone}
}

// parseUsageItem parses "meter=+123" or "meter=-5".
func parseUsageItem(item string) (string, int64, bool) {
	name, num, ok := strings.Cut(strings.TrimSpace(item), "=")
	if !ok || !validMeterName(name) || name == meterRequests {
		return "", 0, false
	}
	d, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
	if err != nil {
		return "", 0, false
	}
	return name, d, true
}

func validMeterName(s string) bool {
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
