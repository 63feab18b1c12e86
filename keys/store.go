package keys

import (
	"context"
	"time"
)

// Store keeps plans, organizations and keys. Implementations are safe for
// concurrent use and translate their failures into the sentinel errors of this
// package: ErrNotFound, ErrConflict, ErrOverAllocated, and ErrUnavailable
// (wrapped) when the backing service cannot be reached. keys/storetest is the
// conformance suite every implementation passes.
type Store interface {
	// CreatePlan adds a plan; ErrConflict when its id is taken.
	CreatePlan(ctx context.Context, p Plan) error
	// Plan returns the plan with the given id.
	Plan(ctx context.Context, id int64) (Plan, error)
	// Plans lists every plan ordered by id.
	Plans(ctx context.Context) ([]Plan, error)

	// CreateOrg adds an organization; ErrConflict when its id or its
	// username is taken.
	CreateOrg(ctx context.Context, o Org) error
	// Org returns the organization with the given id.
	Org(ctx context.Context, id string) (Org, error)
	// OrgByUsername returns the organization whose login is username.
	OrgByUsername(ctx context.Context, username string) (Org, error)
	// Orgs lists every organization ordered by id.
	Orgs(ctx context.Context) ([]Org, error)
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
	// than allocLimit. The check and the write are atomic.
	CreateKey(ctx context.Context, k Key, allocLimit int64) error
	// SetKeyMax changes the per-key maximum of a key (nil = none) under the
	// same allocation rule as CreateKey, returns the updated key and tells
	// every sidecar to forget it.
	SetKeyMax(ctx context.Context, orgID, name string, max *int64, allocLimit int64) (Key, error)
	// SetSealedSecret replaces the sealed secret of a key (used to re-encrypt
	// under a new operator key).
	SetSealedSecret(ctx context.Context, uid string, sealed []byte) error
	// KeyByHash returns the key whose secret hashes to h.
	KeyByHash(ctx context.Context, h SecretHash) (Key, error)
	// KeyByUID returns the key with the given access_key.
	KeyByUID(ctx context.Context, uid string) (Key, error)
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

// Revocation tells sidecars to forget cached principals: of one key when
// KeyUID is set, else of every key of OrgID.
type Revocation struct {
	OrgID  string `json:"org_id"`
	KeyUID string `json:"key_uid,omitempty"`
	// PublishedAt lets receivers measure propagation lag.
	PublishedAt time.Time `json:"published_at"`
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
