// Package keys is the domain of credentials and tenants: plans, organizations,
// keys and their permissions, the secrets that prove a key, the Store contract
// both storage adapters implement, and the Authenticator that turns a
// credential into a Principal with a local cache whose revocation reaches every
// sidecar quickly.
//
// It imports no Redis, HTTP or metrics package: the adapters in keys/memstore
// and keys/redisstore carry those dependencies, and keys/storetest holds the one
// conformance suite both must pass.
package keys
