package keys

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// signedEntry is a key verified for signed requests: its principal and its
// opened secret, and its opened previous secret while a rotation's grace
// lasts (nil otherwise). The secrets live only in this process's memory.
type signedEntry struct {
	p      Principal
	secret []byte
	prev   []byte
}

// AuthenticateSigned verifies a signed request made with the key whose
// access key is accessKey: it finds the key (from the cache, else the store:
// the key, its organization and its plan, as Authenticate reads them), opens
// its sealed secret, and calls verify with the secret; verify reports whether
// the request's signature matches. verify must not keep the slice.
//
// During a rotation's grace verify is also tried with the previous secret
// (the principal then has PreviousSecret set). The opened secrets are cached
// with the principal for the cache TTL, so a signed request costs no more
// store reads than a Bearer one. Revoke evicts them like any cached
// principal. Expiry and grace are checked against the clock at every call.
//
// Errors: ErrSigningOff without a Sealer; ErrInvalidCredential for a
// malformed, unknown or deleted access key, or a disabled or expired key;
// ErrNotSignable for a key created while signing was off (or rotated while
// it was); ErrBadSignature when verify says no; an error
// wrapping ErrUnsealable when the secret cannot be opened with the configured
// operator keys; an error wrapping ErrUnavailable when the store is needed
// but cannot be reached.
func (a *Authenticator) AuthenticateSigned(ctx context.Context, accessKey string, verify func(secret []byte) bool) (Principal, error) {
	if a.opt.Sealer == nil {
		return Principal{}, ErrSigningOff
	}
	if !CheckAccessKey(accessKey) {
		return Principal{}, ErrInvalidCredential
	}
	now := a.opt.Now()

	a.mu.RLock()
	cached, ok := a.signed[accessKey]
	gen := a.gen
	a.mu.RUnlock()
	fresh := false
	if ok {
		var last int64
		fresh, last = a.trusted(cached.p.VerifiedAt.UnixNano(), &cached.p.Org, now)
		cached.p.VerifiedAt = time.Unix(0, last)
	}
	if fresh {
		a.observe("hit")
		return checkSignature(cached, verify, now)
	}

	e, err := a.loadSigned(ctx, accessKey, now)
	if err != nil {
		if errors.Is(err, ErrUnavailable) && ok && a.opt.StaleAuth > 0 && now.Sub(cached.p.VerifiedAt) < a.opt.StaleAuth {
			a.observe("stale")
			cached.p.Stale = true
			return checkSignature(cached, verify, now)
		}
		if errors.Is(err, ErrNotFound) || errors.Is(err, ErrNotSignable) {
			a.forgetSigned(accessKey)
		}
		if errors.Is(err, ErrNotFound) {
			return Principal{}, ErrInvalidCredential
		}
		return Principal{}, err
	}
	a.observe("miss")

	a.mu.Lock()
	if a.gen == gen {
		if a.signed == nil {
			a.signed = make(map[string]signedEntry)
		}
		if len(a.signed) >= a.opt.MaxEntries {
			if victim, ok := evictOne(a.signed, func(e signedEntry) time.Time { return e.p.VerifiedAt }, now, a.opt.StaleAuth); ok {
				a.dropSigned(victim)
			}
		}
		a.putSigned(accessKey, e)
	}
	a.mu.Unlock()
	return checkSignature(e, verify, now)
}

// loadSigned reads a key by its access key with its organization and plan,
// and opens its sealed secret.
func (a *Authenticator) loadSigned(ctx context.Context, accessKey string, now time.Time) (signedEntry, error) {
	k, err := a.store.KeyByUID(ctx, accessKey)
	if err != nil {
		return signedEntry{}, fmt.Errorf("reading key: %w", err)
	}
	if k.UID != accessKey {
		return signedEntry{}, ErrNotFound
	}
	if len(k.SealedSecret) == 0 {
		return signedEntry{}, ErrNotSignable
	}
	secret, err := a.opt.Sealer.Open(k)
	if err != nil {
		return signedEntry{}, err
	}
	// A previous secret that does not open (sealed under an operator key
	// no longer configured) only loses its grace; the current one works.
	var prev []byte
	if k.PreviousValid(now) && len(k.Previous.Sealed) > 0 {
		old := Key{UID: k.UID, OrgID: k.OrgID, SecretHash: k.Previous.Hash, SealedSecret: k.Previous.Sealed}
		if s, err := a.opt.Sealer.Open(old); err == nil {
			prev = s
		}
	}
	p, err := a.principalOf(ctx, k, now)
	if err != nil {
		return signedEntry{}, err
	}
	return signedEntry{p: p, secret: secret, prev: prev}, nil
}

// checkSignature returns the entry's principal if its key may act at now and
// verify accepts its secret, or its previous secret within the grace.
func checkSignature(e signedEntry, verify func([]byte) bool, now time.Time) (Principal, error) {
	if !e.p.Key.ActiveAt(now) {
		return Principal{}, ErrInvalidCredential
	}
	if verify(e.secret) {
		return e.p, nil
	}
	if e.prev != nil && e.p.Key.PreviousValid(now) && verify(e.prev) {
		p := e.p
		p.PreviousSecret = true
		return p, nil
	}
	return Principal{}, ErrBadSignature
}

// CheckAccessKey reports whether s has the shape of an access key keygate
// issues (a UUID in canonical form), so that garbage costs no store read.
func CheckAccessKey(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if c != '-' {
				return false
			}
		case '0' <= c && c <= '9', 'a' <= c && c <= 'f', 'A' <= c && c <= 'F':
		default:
			return false
		}
	}
	return true
}

// revokeSigned applies r to the signed cache. Called with mu held.
func (a *Authenticator) revokeSigned(r Revocation) {
	if r.PlanID != 0 {
		for ak, e := range a.signed {
			if r.Covers(e.p) {
				a.dropSigned(ak)
			}
		}
		return
	}
	for ak := range a.signedByOrg[r.OrgID] {
		if r.Covers(a.signed[ak].p) {
			a.dropSigned(ak)
		}
	}
}

// putSigned caches e under its access key. Called with mu held.
func (a *Authenticator) putSigned(ak string, e signedEntry) {
	if old, ok := a.signed[ak]; ok && old.p.Key.OrgID != e.p.Key.OrgID {
		a.signedByOrg.remove(old.p.Key.OrgID, ak)
	}
	a.signed[ak] = e
	a.signedByOrg.add(e.p.Key.OrgID, ak)
}

// dropSigned forgets the signed entry of an access key. Called with mu held.
func (a *Authenticator) dropSigned(ak string) {
	if e, ok := a.signed[ak]; ok {
		delete(a.signed, ak)
		a.signedByOrg.remove(e.p.Key.OrgID, ak)
	}
}

func (a *Authenticator) forgetSigned(accessKey string) {
	a.mu.Lock()
	a.dropSigned(accessKey)
	a.mu.Unlock()
}
