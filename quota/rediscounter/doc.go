// Package rediscounter is the Redis quota.Counter: the check-and-increment of
// both request counters runs in one Lua script (charge.lua, embedded), so a
// charge is one round trip and never overshoots a max under any concurrency.
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
// without counting again. Add is a MULTI/EXEC of INCRBYs and carries no token,
// so a retried Add after a lost reply may book its deltas twice.
//
// # Errors
//
// Anything that means the store could not answer in time (a network error,
// a timeout, the context's deadline, the pool's wait, a server that is
// loading or a cluster that is down) is returned wrapping both
// quota.ErrUnavailable and the cause.
package rediscounter
