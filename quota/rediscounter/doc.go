// Package rediscounter is the Redis quota.Counter: the check-and-increment of
// both request counters and of the charge's rate limits runs in one Lua
// script (charge.lua, embedded), so a charge is one round trip and never
// overshoots a max or a rate limit under any concurrency.
//
// A rate limit's state is one string key holding its theoretical arrival
// time in unix microseconds ("kg:{<org>}:rl:org:<name>", or
// "kg:{<org>}:rl:key:<key>:<name>"), set with a PX of its debt plus a minute,
// so an idle limit's key vanishes once the limit is full again. Lease
// holders (quota/lease) reserve blocks of a limit's slots in the same key
// (ratelease.lua, RateLease), beside a holder key "kg:{<org>}:rlh:…" that
// makes their give-backs safe to retry. The PX is
// relative, so a Redis clock that differs from the sidecars' cannot empty a
// limit early; the sidecars sharing a limit must agree on the time, as they
// must for the quota windows.
//
// Every key carries the organization's hash tag ("kg:{<org>}:…", built in
// keys.go), so the Counter works unchanged on Redis Cluster.
//
// # The client
//
// New takes any redis.UniversalClient, but the Counter keeps its promise
// never to outlive the caller's context only when the client was created with
// ContextTimeoutEnabled: true; otherwise go-redis waits for its own
// ReadTimeout (3s by default) on a frozen server. ClientOptions sets the
// fields the Counter relies on.
//
// go-redis retries a command whose reply was lost (MaxRetries, 3 by default).
// The charge script is safe to retry when Charge.Token is set: the first run
// stores its reply under the token for a few seconds, and a retry returns it
// without counting again. Add (add.lua, one INCRBY per meter) carries no
// token, so a retried Add after a lost reply may book its deltas twice.
//
// # Pipelines
//
// Charges, lease calls, meter bookings and lease mark reads share up to
// four pipelines in flight (batch.go): a call goes out at once when fewer
// are in flight, else with the next pipeline. On a small machine a lone
// call costs Redis most of its CPU in the round trip (20 to 50 µs on 2
// cores), one in a pipeline of ten about 7 µs.
//
// # Errors
//
// Anything that means the store could not answer in time (a network error,
// a timeout, the context's deadline, the pool's wait, a server that is
// loading or a cluster that is down) is returned wrapping both
// quota.ErrUnavailable and the cause.
package rediscounter
