package manage

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/keygate/keygate/keys"
)

// MaxCommentLen bounds a key's comment (seed 003: 255 characters).
const MaxCommentLen = 255

// NewKey is what every key-creating route asks for.
type NewKey struct {
	OrgID       string
	Name        string
	Permissions []keys.Permission
	Max         *int64
	Comment     string
	// RateLimit is the key's own rate limit (nil: the plan's key_rate_limit).
	RateLimit *keys.RateLimit
	// ExpiresAt is when the key stops working (nil: never).
	ExpiresAt *time.Time
	// Disabled creates the key switched off.
	Disabled bool
}

// CreateKey creates a key under the organization's allocation rule and
// returns it with its secret, which is never available again.
func (s *Service) CreateKey(ctx context.Context, req NewKey) (keys.Key, string, error) {
	if err := keys.ValidateName("name", req.Name); err != nil {
		return keys.Key{}, "", err
	}
	if req.Max != nil && *req.Max < 0 {
		return keys.Key{}, "", &keys.InvalidError{Field: "max_api_requests", Reason: "must be null or at least 0"}
	}
	if len([]rune(req.Comment)) > MaxCommentLen {
		return keys.Key{}, "", &keys.InvalidError{Field: "comment", Reason: fmt.Sprintf("must be at most %d characters", MaxCommentLen)}
	}
	if req.RateLimit != nil {
		if err := req.RateLimit.Validate(); err != nil {
			return keys.Key{}, "", err
		}
	}
	var expires *time.Time
	if req.ExpiresAt != nil {
		t := req.ExpiresAt.UTC()
		expires = &t
	}
	o, err := s.opt.Store.Org(ctx, req.OrgID)
	if err != nil {
		return keys.Key{}, "", fmt.Errorf("reading org: %w", err)
	}
	allocLimit, err := s.AllocLimit(ctx, o)
	if err != nil {
		return keys.Key{}, "", err
	}
	secret, err := keys.NewSecret()
	if err != nil {
		return keys.Key{}, "", err
	}
	uid, err := keys.NewUUID()
	if err != nil {
		return keys.Key{}, "", err
	}
	k := keys.Key{
		UID:            uid,
		OrgID:          o.ID,
		Name:           req.Name,
		Permissions:    req.Permissions,
		MaxAPIRequests: req.Max,
		Comment:        req.Comment,
		RateLimit:      req.RateLimit,
		ExpiresAt:      expires,
		Disabled:       req.Disabled,
		CreatedAt:      s.opt.Now().UTC(),
		SecretHash:     keys.HashSecret(secret),
	}
	if err := s.sealSecret(&k, secret); err != nil {
		return keys.Key{}, "", err
	}
	if err := s.opt.Store.CreateKey(ctx, k, allocLimit); err != nil {
		return keys.Key{}, "", fmt.Errorf("creating key: %w", err)
	}
	s.opt.Auth.ForgetUnknown()
	return k, secret, nil
}

// sealSecret stores the secret encrypted when request signing is on, so the
// key can sign requests; without a Sealer the key gets no sealed secret.
func (s *Service) sealSecret(k *keys.Key, secret string) error {
	if s.opt.Sealer == nil {
		return nil
	}
	sealed, err := s.opt.Sealer.Seal(*k, secret)
	if err != nil {
		return fmt.Errorf("sealing secret: %w", err)
	}
	k.SealedSecret = sealed
	return nil
}

// AllocLimit is the organization's request quota, the bound on the sum of
// its keys' maxima; -1 when unlimited.
func (s *Service) AllocLimit(ctx context.Context, o keys.Org) (int64, error) {
	pl, err := s.opt.Store.Plan(ctx, o.PlanID)
	if err != nil && !errors.Is(err, keys.ErrNotFound) {
		return 0, fmt.Errorf("reading plan: %w", err)
	}
	limit, _ := o.RequestQuota(pl)
	return limit, nil
}

// DeleteKey deletes a key by name and revokes it on this sidecar at once;
// the store tells the others.
func (s *Service) DeleteKey(ctx context.Context, orgID, name string) (keys.Key, error) {
	k, err := s.opt.Store.DeleteKey(ctx, orgID, name)
	if err = s.madeAnyway(err); err != nil {
		return keys.Key{}, fmt.Errorf("deleting key: %w", err)
	}
	s.opt.Auth.Revoke(keys.Revocation{OrgID: k.OrgID, KeyUID: k.UID})
	return k, nil
}

// madeAnyway turns a store's ErrNotBroadcast into success with a warning:
// the change was made, and the caller revokes it locally at once; other
// sidecars forget the old state within their cache TTL instead of at once.
func (s *Service) madeAnyway(err error) error {
	if errors.Is(err, keys.ErrNotBroadcast) {
		s.log.Warn("change made but its revocation was not broadcast: other sidecars apply it within KEYGATE_AUTH_CACHE_TTL", zap.Error(err))
		return nil
	}
	return err
}

// UpdateKey applies a partial change to a key — its maximum under the
// organization's allocation rule, rate limit, expiry, enabled switch,
// permissions, comment — and revokes the key's cached principal here at
// once; the store tells the other sidecars.
func (s *Service) UpdateKey(ctx context.Context, orgID, name string, p keys.KeyPatch) (keys.Key, error) {
	if err := p.Validate(); err != nil {
		return keys.Key{}, err
	}
	o, err := s.opt.Store.Org(ctx, orgID)
	if err != nil {
		return keys.Key{}, fmt.Errorf("reading org: %w", err)
	}
	limit, err := s.AllocLimit(ctx, o)
	if err != nil {
		return keys.Key{}, err
	}
	k, err := s.opt.Store.UpdateKey(ctx, o.ID, name, p, limit)
	if err = s.madeAnyway(err); err != nil {
		return keys.Key{}, fmt.Errorf("changing key: %w", err)
	}
	s.opt.Auth.Revoke(keys.Revocation{OrgID: k.OrgID, KeyUID: k.UID})
	return k, nil
}

// RotateKey gives a key a new secret, keeping its uid, access key,
// permissions, limits and counters; the previous secret keeps working
// until the grace ends. It returns the key, the new secret (shown once)
// and when the previous one stops working.
func (s *Service) RotateKey(ctx context.Context, orgID, name string, grace time.Duration) (keys.Key, string, time.Time, error) {
	if grace < 0 || grace > keys.MaxRotationGrace {
		return keys.Key{}, "", time.Time{}, &keys.InvalidError{Field: "grace", Reason: fmt.Sprintf("must be from 0s to %s", keys.MaxRotationGrace)}
	}
	k, err := s.opt.Store.KeyByName(ctx, orgID, name)
	if err != nil {
		return keys.Key{}, "", time.Time{}, fmt.Errorf("reading key: %w", err)
	}
	secret, err := keys.NewSecret()
	if err != nil {
		return keys.Key{}, "", time.Time{}, err
	}
	next := k
	next.SecretHash = keys.HashSecret(secret)
	next.SealedSecret = nil
	if err := s.sealSecret(&next, secret); err != nil {
		return keys.Key{}, "", time.Time{}, err
	}
	k, until, err := s.opt.Store.RotateKey(ctx, orgID, name, keys.Rotation{
		UID: k.UID, Hash: next.SecretHash, Sealed: next.SealedSecret, Grace: grace, Now: s.opt.Now(),
	})
	if err = s.madeAnyway(err); err != nil {
		return keys.Key{}, "", time.Time{}, fmt.Errorf("rotating key: %w", err)
	}
	s.opt.Auth.Revoke(keys.Revocation{OrgID: k.OrgID, KeyUID: k.UID})
	return k, secret, until, nil
}

// UpdatePlan applies a partial change to a plan and revokes the cached
// principals of every organization on it here at once.
func (s *Service) UpdatePlan(ctx context.Context, id int64, p keys.PlanPatch) (keys.Plan, error) {
	if err := p.Validate(); err != nil {
		return keys.Plan{}, err
	}
	pl, err := s.opt.Store.UpdatePlan(ctx, id, p)
	if err = s.madeAnyway(err); err != nil {
		return keys.Plan{}, fmt.Errorf("changing plan: %w", err)
	}
	s.opt.Auth.Revoke(keys.Revocation{PlanID: id})
	return pl, nil
}
