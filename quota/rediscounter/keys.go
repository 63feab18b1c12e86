package rediscounter

import "github.com/keygate/keygate/quota"

// Every key the Counter touches is built here, and every one starts with
// "kg:{<org>}:". Redis Cluster hashes only the text between the first "{" and
// the first "}" after it, so all keys of one organization share a slot and
// the charge script can never fail with CROSSSLOT. quota.CheckOrgID refuses the org
// ids that would break this (see there).

// prefix is "kg:{<org>}:".
func prefix(org string) string { return "kg:{" + org + "}:" }

// orgCounterKey is the request counter of an organization in one window.
func orgCounterKey(org, window string) string { return prefix(org) + "q:org:" + window }

// keyCounterKey is the request counter of one key in one window.
func keyCounterKey(org, key, window string) string {
	return prefix(org) + "q:key:" + key + ":" + window
}

// tokenKey holds the reply of the charge that carried token, for retries.
func tokenKey(org, token string) string { return prefix(org) + "tok:" + token }

// nonceKey marks a nonce as used until its expiry.
func nonceKey(org, nonce string) string { return prefix(org) + "nonce:" + nonce }

// rateKey holds the TAT of a rate limit: one per org, or one per key of the
// org. Limit names have no ':' (quota.RateLimit.Validate), so a key id with
// one cannot make two limits' keys collide.
func rateKey(org, key string, l quota.RateLimit) string {
	if l.Scope == quota.ScopeKey {
		return prefix(org) + "rl:key:" + key + ":" + l.Name
	}
	return prefix(org) + "rl:org:" + l.Name
}

// meterKey is the value of one meter of an organization in one window.
func meterKey(org, meter, window string) string { return prefix(org) + "m:" + meter + ":" + window }

// leaseKeysKey is the hash of an organization's per-key request counts
// booked from lease blocks in one window (field: leaseKeyField), so that one
// flush writes the counts of many keys in one command. A key's usage is its
// counter plus its field.
func leaseKeysKey(org, window string) string { return prefix(org) + "q:keys:" + window }

// leaseKeyField names a key in leaseKeysKey: its counter's name after
// "kg:{<org>}:q:key:", which the scripts cut from the counter's name.
func leaseKeyField(key, window string) string { return key + ":" + window }

// leaseHoldersKey is the hash of the lease holders of an organization in one
// window: per holder (a sidecar process), "u:<holder>" the units it booked
// into the org counter and has neither booked into leaseKeysKey nor
// returned, "t:<holder>" until when that claim is live (unix ms),
// "s:<holder>" the last settlement it applied, "a:<holder>" its org block's
// unspent units and "k:<holder>" its key blocks' (as of its last call), "r:"
// the contention mark of a refused reservation (lease.lua, keylease.lua),
// "c:<holder>" its held counts (held.go) and "d:<holder>" whether another
// holder adopted them.
func leaseHoldersKey(org, window string) string { return prefix(org) + "q:lease:" + window }

// leaseHeldKey is the sorted set of the lease holders of an organization in
// one window that hold counts in leaseHoldersKey (c:<holder>), scored by
// when those began (unix ms): for folds to find a dead holder's.
func leaseHeldKey(org, window string) string { return prefix(org) + "q:held:" + window }

// keyHoldersKey is the hash of the holders of blocks of one key in one
// window: "a:<holder>" what its block held unspent at its last call,
// "c:<holder>" the units it gave back in all, "r:" the key's contention
// mark (keylease.lua).
func keyHoldersKey(org, key, window string) string {
	return prefix(org) + "q:kl:" + key + ":" + window
}
