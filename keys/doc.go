// Package keys is the domain of credentials and tenants: plans, organizations,
// keys and their permissions, the secrets that prove a key, the Store contract
// both storage adapters implement, and the Authenticator that turns a
// credential into a Principal with a local cache whose revocation reaches every
// sidecar quickly.
//
// It also models what limits and retires keys, without enforcing any of it
// in storage: rate limits (RateLimit on plans, organizations and keys;
// quota counts them), the key lifecycle (expiry, disabling, rotation with a
// grace period, all checked by the Authenticator at every request, cached
// entries included) and last-used times, recorded off the request path by a
// Toucher. Partial updates of keys and plans are KeyPatch and PlanPatch,
// whose JSON form is the operator API's.
//
// It imports no Redis, HTTP or metrics package: the adapters in keys/memstore
// and keys/redisstore carry those dependencies, and keys/storetest holds the one
// conformance suite both must pass.
package keys
