package rediscounter

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keygate/keygate/internal/redisfail"
	"github.com/keygate/keygate/quota"
)

// chargeSrc is the check-and-increment. Its contract, also written at the
// top of charge.lua:
//
//	KEYS[1] org counter  kg:{<org>}:q:org:<window>
//	KEYS[2] key counter  kg:{<org>}:q:key:<key>:<window>
//	KEYS[3] token        kg:{<org>}:tok:<token>    (untouched when ARGV[5] is 0)
//	KEYS[4] nonce        kg:{<org>}:nonce:<nonce>  (untouched when ARGV[6] is -1)
//	KEYS[5] lease counts kg:{<org>}:q:keys:<window>: per-key counts booked
//	        from lease blocks (lease.lua), field "<key>:<window>"; read when the key has a max
//	KEYS[5+i] rate limit i of n = #KEYS-5: kg:{<org>}:rl:org:<name> or
//	        kg:{<org>}:rl:key:<key>:<name>, holding its TAT in unix µs
//	ARGV[1] cost, >= 0 (0 checks no limit and counts nothing)
//	ARGV[2] org max, -1 = unlimited
//	ARGV[3] key max, -1 = none
//	ARGV[4] counters' expire-at, unix seconds, 0 = never
//	ARGV[5] token TTL in milliseconds, 0 = no token
//	ARGV[6] nonce expire-at, unix milliseconds, 0 = never, -1 = no nonce
//	ARGV[7] the charge's instant, unix milliseconds (a nonce is used while its
//	        expire-at is later)
//	ARGV[8] (n > 0 only) the charge's instant, unix microseconds
//	ARGV[6+3i], ARGV[7+3i], ARGV[8+3i] rate limit i's interval (µs per
//	        unit), burst, and 1 if it is a shadow
//	Reply {status, org used, key used}: 1 admitted (usages after), 0 refused
//	by the key, -1 refused by the org (usages unchanged; the key is checked
//	first), -2 nonce replay ({-2, 0, 0}), -3 refused by a rate limit. Statuses
//	1 and -3 add, per rate limit, its debt in µs and 1 if it would refuse.
//	A token seen before returns its stored reply unchanged. A refusal writes
//	nothing but the token. Without rate limits, the script runs the same
//	commands and replies the same as before rate limits existed, plus one
//	HGET of KEYS[5] for a key with a max.
//
//go:embed charge.lua
var chargeSrc string

var chargeScript = redis.NewScript(chargeSrc)

// addScript books meter deltas all or nothing (add.lua).
//
//go:embed add.lua
var addSrc string

var addScript = redis.NewScript(addSrc)

// Reply statuses of charge.lua.
const (
	statusAdmitted    = 1
	statusRefusedKey  = 0
	statusRefusedOrg  = -1
	statusReplay      = -2
	statusRefusedRate = -3
)

// tokenTTL is how long a charge's reply is kept under its token: longer than
// go-redis's retries of one call can last within a request deadline
// (KEYGATE_REDIS_TIMEOUT, 250ms by default), short enough that the tokens of
// a busy org take little memory.
const tokenTTL = 5 * time.Second

// Counter is a quota.Counter on Redis or Redis Cluster. It is safe for
// concurrent use. The zero value is not usable; call New.
type Counter struct {
	rdb   redis.UniversalClient
	batch batcher
}

var _ quota.Counter = (*Counter)(nil)

// New returns a Counter on rdb, which should have been created with the
// options ClientOptions sets.
func New(rdb redis.UniversalClient) *Counter { return &Counter{rdb: rdb} }

// ClientOptions sets in o (and returns o) the client options the Counter
// relies on: ContextTimeoutEnabled, so that no call outlives its context's
// deadline. Retries (MaxRetries) stay as they are; charges carrying a Token
// are safe to retry.
func ClientOptions(o *redis.UniversalOptions) *redis.UniversalOptions {
	o.ContextTimeoutEnabled = true
	return o
}

// Load loads the charge script into every master, so the first charges do
// not pay for a NOSCRIPT round trip. It doubles as a readiness check.
func (c *Counter) Load(ctx context.Context) error {
	for _, s := range []*redis.Script{chargeScript, leaseScript, keyLeaseScript, usageScript, rateLeaseScript} {
		if err := s.Load(ctx, c.rdb).Err(); err != nil {
			return storeError("loading scripts", err)
		}
	}
	return nil
}

// Charge applies the quota and rate-limit rule in one round trip of
// charge.lua (contract above). When both quotas are exhausted the refusal
// names the key's; when a quota and a rate limit refuse, the quota's. A
// charge with a Token may be retried by go-redis after a lost reply and still
// counts once; a failure to reach Redis wraps quota.ErrUnavailable, and then
// whether the charge counted is unknown.
func (c *Counter) Charge(ctx context.Context, ch quota.Charge) (quota.Result, error) {
	if err := quota.CheckCharge(ch); err != nil {
		return quota.Result{}, err
	}
	w := ch.Period.Window(ch.At)
	n := len(ch.RateLimits)
	keys := make([]string, 5, 5+n)
	keys[0] = orgCounterKey(ch.OrgID, w.ID)
	keys[1] = keyCounterKey(ch.OrgID, ch.KeyID, w.ID)
	keys[2] = tokenKey(ch.OrgID, ch.Token)
	keys[3] = nonceKey(ch.OrgID, ch.Nonce)
	keys[4] = leaseKeysKey(ch.OrgID, w.ID)
	var expireAt, ttl, nonceAt int64
	if at := w.ExpireAt(); !at.IsZero() {
		expireAt = at.Unix()
	}
	if ch.Token != "" {
		ttl = tokenTTL.Milliseconds()
	}
	switch {
	case ch.Nonce == "":
		nonceAt = -1
	case !ch.NonceUntil.IsZero():
		nonceAt = max(ch.NonceUntil.UnixMilli(), 1)
	}
	args := make([]any, 7, 8+3*n)
	args[0], args[1], args[2], args[3] = ch.Cost, limit(ch.OrgMax), limit(ch.KeyMax), expireAt
	args[4], args[5], args[6] = ttl, nonceAt, ch.At.UnixMilli()
	if n > 0 {
		args = append(args, ch.At.UnixMicro())
		for _, l := range ch.RateLimits {
			keys = append(keys, rateKey(ch.OrgID, ch.KeyID, l))
			shadow := 0
			if l.Shadow {
				shadow = 1
			}
			args = append(args, l.Interval().Microseconds(), l.EffectiveBurst(), shadow)
		}
	}
	v, err := c.run(ctx, chargeScript, keys, args...)
	if err != nil {
		return quota.Result{}, storeError("charging org "+ch.OrgID, err)
	}
	r, err := parseChargeReply(v)
	if err != nil {
		return quota.Result{}, fmt.Errorf("charging org %s: %w", ch.OrgID, err)
	}
	switch r.status {
	case statusAdmitted:
		res := quota.Result{OrgUsed: r.org, KeyUsed: r.key, Window: w}
		if n > 0 {
			if res.RateLimits, err = rateOutcome(ch, r); err != nil {
				return quota.Result{}, err
			}
		}
		return res, nil
	case statusRefusedKey:
		return quota.Result{}, &quota.ExceededError{Scope: quota.ScopeKey, Limit: ch.KeyMax, Used: r.key, Window: w}
	case statusRefusedOrg:
		return quota.Result{}, &quota.ExceededError{Scope: quota.ScopeOrg, Limit: ch.OrgMax, Used: r.org, Window: w}
	case statusReplay:
		return quota.Result{}, fmt.Errorf("charging org %s: %w", ch.OrgID, quota.ErrReplay)
	case statusRefusedRate:
		if _, err := rateOutcome(ch, r); err != nil {
			return quota.Result{}, err
		}
		return quota.Result{}, fmt.Errorf("charging org %s: charge script: rate refusal without a refusing limit", ch.OrgID)
	}
	return quota.Result{}, fmt.Errorf("charging org %s: charge script: unknown status %d", ch.OrgID, r.status)
}

// rateOutcome reads the rate-limit part of a reply: a *quota.RateLimitedError
// is returned as it is, anything else wrapped.
func rateOutcome(ch quota.Charge, r chargeReply) ([]quota.RateLimitState, error) {
	n := len(ch.RateLimits)
	if len(r.rates) != 2*n {
		return nil, fmt.Errorf("charging org %s: charge script: %d rate values for %d limits", ch.OrgID, len(r.rates), n)
	}
	debts, limited := make([]int64, n), make([]bool, n)
	for i := range n {
		debts[i], limited[i] = r.rates[2*i], r.rates[2*i+1] == 1
	}
	states, err := quota.RateOutcome(ch, debts, limited)
	var rl *quota.RateLimitedError
	if err != nil && !errors.As(err, &rl) {
		return nil, fmt.Errorf("charging org %s: %w", ch.OrgID, err)
	}
	return states, err
}

// Usage reads the org's and the key's counters in one script call
// (usage.lua, one slot). A key's usage includes its requests counted from
// lease blocks, and what lease holders may have admitted for the org's
// keys without counting it against a key yet, so that it is never below
// what was admitted (see quota/lease).
func (c *Counter) Usage(ctx context.Context, orgID, keyID string, period quota.Period, at time.Time) (quota.Usage, error) {
	u, err := c.LeaseUsage(ctx, orgID, keyID, period, at, "")
	if err != nil {
		return quota.Usage{}, err
	}
	if keyID != "" {
		u.Key += u.Pending
	}
	return u.Usage, nil
}

// Add books the deltas in one MULTI/EXEC: INCRBY and, for periods that end,
// EXPIREAT at the window's expiry. The INCRBY replies are the totals.
func (c *Counter) Add(ctx context.Context, orgID string, at time.Time, deltas []quota.MeterDelta) ([]int64, error) {
	if err := quota.CheckOrgID(orgID); err != nil {
		return nil, err
	}
	if len(deltas) == 0 {
		return []int64{}, nil
	}
	keys := make([]string, len(deltas))
	args := make([]any, 0, 2*len(deltas))
	for i, d := range deltas {
		w := d.Meter.Period.Window(at)
		keys[i] = meterKey(orgID, d.Meter.Name, w.ID)
		var exp int64
		if e := w.ExpireAt(); !e.IsZero() {
			exp = e.Unix()
		}
		args = append(args, d.Delta, exp)
	}
	out, err := int64s(c.runLater(ctx, addScript, keys, args...))
	if err != nil {
		if strings.Contains(err.Error(), "keygate add: overflow") {
			return nil, fmt.Errorf("booking meters of org %s: %w", orgID, quota.ErrOverflow)
		}
		return nil, storeError("booking meters of org "+orgID, err)
	}
	if len(out) != len(deltas) {
		return nil, fmt.Errorf("booking meters of org %s: %d totals for %d deltas", orgID, len(out), len(deltas))
	}
	return out, nil
}

// Meters reads the meters with one MGET (one slot).
func (c *Counter) Meters(ctx context.Context, orgID string, at time.Time, meters []quota.Meter) ([]int64, error) {
	if err := quota.CheckOrgID(orgID); err != nil {
		return nil, err
	}
	if len(meters) == 0 {
		return []int64{}, nil
	}
	keys := make([]string, len(meters))
	for i, m := range meters {
		keys[i] = meterKey(orgID, m.Name, m.Period.Window(at).ID)
	}
	vals, err := c.mget(ctx, keys)
	if err != nil {
		return nil, storeError("reading meters of org "+orgID, err)
	}
	out := make([]int64, len(vals))
	for i, v := range vals {
		if out[i], err = parseCount(v); err != nil {
			return nil, fmt.Errorf("reading meters of org %s: meter %s: %w", orgID, meters[i].Name, err)
		}
	}
	return out, nil
}

// mget reads keys and checks that the reply has one value per key.
func (c *Counter) mget(ctx context.Context, keys []string) ([]any, error) {
	vals, err := c.rdb.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, err
	}
	if len(vals) != len(keys) {
		return nil, fmt.Errorf("MGET of %d keys: %d values", len(keys), len(vals))
	}
	return vals, nil
}

// limit maps every negative max to the script's -1.
func limit(m int64) int64 { return max(m, -1) }

// chargeReply is charge.lua's reply: a status, the usages and, for
// statuses 1 and -3 of a charge with rate limits, two values per limit.
type chargeReply struct {
	status, org, key int64
	rates            []int64
}

// parseChargeReply checks the script's reply: at least three integers, and
// two more per rate limit.
func parseChargeReply(v any) (chargeReply, error) {
	vals, ok := v.([]any)
	if !ok || len(vals) < 3 || len(vals)%2 == 0 {
		return chargeReply{}, fmt.Errorf("charge script: unexpected reply %T %v", v, v)
	}
	var r chargeReply
	if len(vals) > 3 {
		r.rates = make([]int64, len(vals)-3)
	}
	for i, x := range vals {
		n, ok := x.(int64)
		if !ok {
			return chargeReply{}, fmt.Errorf("charge script: reply element %d is %T, want an integer", i, x)
		}
		switch i {
		case 0:
			r.status = n
		case 1:
			r.org = n
		case 2:
			r.key = n
		default:
			r.rates[i-3] = n
		}
	}
	return r, nil
}

// parseCount reads one MGET value: nil (no key) is 0.
func parseCount(v any) (int64, error) {
	switch x := v.(type) {
	case nil:
		return 0, nil
	case string:
		n, err := strconv.ParseInt(x, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("counter value %q: %w", x, err)
		}
		return n, nil
	}
	return 0, fmt.Errorf("counter value of type %T", v)
}

// storeError wraps err, adding quota.ErrUnavailable when it means the store
// could not answer in time rather than that it refused the command.
func storeError(doing string, err error) error {
	if redisfail.Unavailable(err) {
		return fmt.Errorf("%s: %w: %w", doing, quota.ErrUnavailable, err)
	}
	return fmt.Errorf("%s: %w", doing, err)
}
