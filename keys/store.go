package keys

import (
	"context"
	"slices"
	"time"
)

// Store keeps plans, organizations and keys. Implementations are safe for
// concurrent use and translate their failures into the sentinel errors of this
// package: ErrNotFound, ErrConflict, ErrOverAllocated, and ErrUnavailable
// (wrapped) when the backing service cannot be reached. keys/storetest is the
// conformance suite every implementation passes.
type Store interface {
	// CreatePlan adds a plan (p.Validate first); ErrConflict when its id is
	// taken.
	CreatePlan(ctx context.Context, p Plan) error
	// Plan returns the plan with the given id.
	Plan(ctx context.Context, id int64) (Plan, error)
	// Plans lists every plan ordered by id.
	Plans(ctx context.Context) ([]Plan, error)
	// UpdatePlan applies p to the plan with the given id (p.Validate first:
	// a *InvalidError changes nothing), atomically and without losing a
	// concurrent change, returns the updated plan and tells every sidecar to
	// forget the cached principals of organizations on that plan
	// (Revocation{PlanID: id}). ErrNotFound when there is no such plan.
	UpdatePlan(ctx context.Context, id int64, p PlanPatch) (Plan, error)

	// CreateOrg adds an organization (o.Validate first); ErrConflict when its
	// id or its username is taken.
	CreateOrg(ctx context.Context, o Org) error
	// Org returns the organization with the given id.
	Org(ctx context.Context, id string) (Org, error)
	// OrgByUsername returns the organization whose login is username.
	OrgByUsername(ctx context.Context, username string) (Org, error)
	// Orgs lists every organization ordered by id.
	Orgs(ctx context.Context) ([]Org, error)
	// FindOrgs returns one page of organizations (q.Normalize first: a
	// *InvalidError lists nothing). Without q.Search they are ordered by id
	// and Next is the last id of the page; with it, the organizations that
	// have a search term starting with it are listed once each, ordered by
	// (SearchTerm, id), and Next is a SearchCursor. Next is empty on the last
	// page. A page costs about its size, not the number of organizations.
	FindOrgs(ctx context.Context, q OrgQuery) (OrgPage, error)
	// SubOrgs lists the organizations created by partner, ordered by id.
	SubOrgs(ctx context.Context, partnerID string) ([]Org, error)
	// UpdateOrg replaces an existing organization (its id and username
	// cannot change) if it is still at o.Revision, the revision the caller
	// read, and sets o.Revision to the new one; a concurrent change in
	// between fails with ErrConflict (read again and retry) instead of being
	// overwritten. It tells every sidecar to forget cached principals of the
	// organization.
	UpdateOrg(ctx context.Context, o *Org) error

	// CreateKey adds k to its organization. It fails with ErrNotFound when
	// the organization does not exist, ErrConflict when the name is taken in
	// that organization, and ErrOverAllocated when allocLimit >= 0 and the
	// per-key maxima of the organization, k's included, would add up to more
	// than allocLimit. The check and the write are atomic. k.LastUsedAt and
	// k.Previous are not stored: a key starts unused and unrotated.
	CreateKey(ctx context.Context, k Key, allocLimit int64) error
	// UpdateKey applies p to the key called name (p.Validate first: a
	// *InvalidError changes nothing), atomically and without losing a
	// concurrent change, returns the updated key and tells every sidecar to
	// forget it. A new per-key maximum is checked under the allocation rule
	// of CreateKey (ErrOverAllocated); a patch that leaves the maximum alone
	// is never refused for allocation. ErrNotFound when there is no such key.
	UpdateKey(ctx context.Context, orgID, name string, p KeyPatch, allocLimit int64) (Key, error)
	// RotateKey gives the key called name a new secret (see Rotation) and
	// returns the updated key and when its previous secret stops working
	// (r.Now+r.Grace; r.Now when there is no grace). The key keeps its uid,
	// access key, permissions, limits and counters. During the grace both
	// secrets authenticate: KeyByHash finds the key by either hash, and
	// Previous holds the previous hash and sealed secret. From r.Now+r.Grace
	// on the previous secret is refused like a deleted key's. A rotation
	// during another's grace replaces that grace: only the secret it retires
	// stays valid, the one retired before is refused at once. It tells every
	// sidecar to forget the key. ErrNotFound when there is no such key (or
	// r.UID is set and name no longer names that key); a *InvalidError for
	// a grace out of bounds or a hash that is already the key's.
	RotateKey(ctx context.Context, orgID, name string, r Rotation) (k Key, previousExpiresAt time.Time, err error)
	// TouchKeys records when keys last authenticated a request, many keys
	// in one round trip: for each key, last_used_at becomes the given time
	// unless it already holds a later one (it never moves backwards). Keys
	// that no longer exist are skipped. It revokes nothing: last_used_at is
	// not part of a principal. See Toucher, which batches the calls.
	TouchKeys(ctx context.Context, used map[KeyRef]time.Time) error
	// SetSealedSecret replaces the sealed secret of a key (used to re-encrypt
	// under a new operator key).
	SetSealedSecret(ctx context.Context, uid string, sealed []byte) error
	// KeyByHash returns the key whose secret hashes to h: its current
	// secret, or its previous one while the rotation's grace lasts by the
	// store's clock. It returns disabled and expired keys too; the
	// Authenticator refuses them.
	KeyByHash(ctx context.Context, h SecretHash) (Key, error)
	// KeyByUID returns the key with the given access_key.
	KeyByUID(ctx context.Context, uid string) (Key, error)
	// KeyByName returns the key called name in an organization.
	KeyByName(ctx context.Context, orgID, name string) (Key, error)
	// Keys lists the keys of an organization ordered by creation time, then
	// name. An unknown organization has no keys.
	Keys(ctx context.Context, orgID string) ([]Key, error)
	// DeleteKey removes the key called name from an organization, returns
	// it, and tells every sidecar sharing the store to forget it.
	DeleteKey(ctx context.Context, orgID, name string) (Key, error)

	// Watch calls fn for every revocation published by any sidecar sharing
	// the store, including this one, until ctx is done. It returns when ctx is
	// done or when it can no longer receive revocations.
	Watch(ctx context.Context, fn func(Revocation)) error
	// Ping reports whether the store can be reached.
	Ping(ctx context.Context) error
}

// Revocation tells sidecars to forget cached principals. It comes in three
// forms:
//
//	Revocation{OrgID: o, KeyUID: k}  one key (deleted, updated, rotated)
//	Revocation{OrgID: o}             every key of an organization (UpdateOrg)
//	Revocation{PlanID: p}            every key of every organization on a plan (UpdatePlan)
//
// Its JSON is what travels between sidecars. A sidecar older than PlanID
// ignores a plan revocation (it matches no organization) and picks the change
// up when its cache entries expire.
type Revocation struct {
	OrgID  string `json:"org_id"`
	KeyUID string `json:"key_uid,omitempty"`
	PlanID int64  `json:"plan_id,omitempty"`
	// Logged is set on a revocation Watch delivers that is also in the
	// store's change log (ChangeFeed): a follower of the log applies it from
	// there. One without it was published by a sidecar older than the log.
	Logged bool `json:"logged,omitempty"`
	// PublishedAt lets receivers measure propagation lag.
	PublishedAt time.Time `json:"published_at"`
}

// Covers reports whether r revokes the cached principal p. A plan
// revocation covers the principals whose organization is on the plan, was
// read with it, or has it scheduled.
func (r Revocation) Covers(p Principal) bool {
	if r.PlanID != 0 {
		o := p.Org
		return p.Plan.ID == r.PlanID || o.PlanID == r.PlanID || (o.NextPlanID != nil && *o.NextPlanID == r.PlanID)
	}
	return p.Key.OrgID == r.OrgID && (r.KeyUID == "" || p.Key.UID == r.KeyUID)
}

// MaxRotationGrace bounds the grace period of a rotation.
const MaxRotationGrace = 720 * time.Hour

// Rotation is a new secret for a key, as Store.RotateKey takes it.
type Rotation struct {
	// UID, when set, is the uid the caller read the key with (to seal the
	// new secret for it): the rotation fails with ErrNotFound when the name
	// now names another key.
	UID string
	// Hash is the new secret's hash.
	Hash SecretHash
	// Sealed is the new secret sealed for this key (Sealer.Seal), or nil
	// when signing is off.
	Sealed []byte
	// Grace is how long the previous secret keeps working: 0 (it stops at
	// once) to MaxRotationGrace.
	Grace time.Duration
	// Now is when the rotation happens; the grace ends at Now+Grace.
	Now time.Time
}

// Validate checks the grace period.
func (r Rotation) Validate() error {
	if r.Grace < 0 || r.Grace > MaxRotationGrace {
		return &InvalidError{Field: "grace", Reason: "must be a Go duration from 0s to 720h"}
	}
	return nil
}

// Apply returns k with its secret rotated: the new hash and sealed secret
// current, the old ones kept as Previous until r.Now+r.Grace (no Previous
// when Grace is 0), and the end of the previous secret's validity. A
// previous secret k already had is dropped. A new hash equal to k's current
// or previous one is refused (a *InvalidError): reusing a secret would let
// the end of its own grace retire it. Stores call Apply so both rotate
// alike; it shares no memory with r.
func (r Rotation) Apply(k Key) (Key, time.Time, error) {
	if r.Hash == k.SecretHash || (k.Previous != nil && r.Hash == k.Previous.Hash) {
		return Key{}, time.Time{}, &InvalidError{Field: "secret", Reason: "must differ from the key's current and previous secrets"}
	}
	until := r.Now.Add(r.Grace).UTC()
	k.Previous = nil
	if r.Grace > 0 {
		k.Previous = &PreviousSecret{Hash: k.SecretHash, Sealed: k.SealedSecret, ExpiresAt: until}
	}
	k.SecretHash = r.Hash
	k.SealedSecret = slices.Clone(r.Sealed)
	return k, until, nil
}

// Allocated returns the sum of the per-key maxima of ks.
func Allocated(ks []Key) int64 {
	var sum int64
	for _, k := range ks {
		if k.MaxAPIRequests != nil {
			sum += *k.MaxAPIRequests
		}
	}
	return sum
}

// ChangeFeed is a store's resumable log of its changes, as revocations:
// every change to a key, an organization or a plan is appended, and a
// follower that was cut off resumes from the last position it saw, so no
// change is lost to a disconnect. The log is bounded: a follower that fell
// further behind than it holds is told so (ChangeBatch.Gap) and must forget
// what it cached. Both stores implement it; keys/storetest tests it.
type ChangeFeed interface {
	// FollowChanges calls fn, on FollowChanges's goroutine and in log
	// order, with the changes logged after position from, until ctx is done
	// (it returns ctx.Err()) or the log cannot be read (an error wrapping
	// ErrUnavailable). An empty from, or one the log no longer holds or
	// cannot verify, starts with a batch marked Gap at the log's end. When
	// nothing changes it still calls fn about once a second with an empty
	// Current batch, which confirms the follower's cache.
	FollowChanges(ctx context.Context, from string, fn func(ChangeBatch)) error
}

// ChangeBatch is one read of a ChangeFeed.
type ChangeBatch struct {
	// Revocations are the changes read, in log order.
	Revocations []Revocation
	// Pos is the position after them: where a later follow resumes.
	Pos string
	// Gap is set when changes since the position the follow started from
	// may be missing: the follower forgets its cache before applying the
	// batch.
	Gap bool
	// Current is set when the batch brings the follower up to date: every
	// change logged before the read began, Age ago, is in this batch or an
	// earlier one.
	Current bool
	Age     time.Duration
}
