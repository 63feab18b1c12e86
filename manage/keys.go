package manage

import (
	"context"
	"errors"
	"fmt"

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

// SetKeyMax changes a key's own request maximum under the organization's
// allocation rule and revokes the key's cached principal here at once.
func (s *Service) SetKeyMax(ctx context.Context, orgID, name string, max *int64) (keys.Key, error) {
	if max != nil && *max < 0 {
		return keys.Key{}, &keys.InvalidError{Field: "max_api_requests", Reason: "must be null or at least 0"}
	}
	o, err := s.opt.Store.Org(ctx, orgID)
	if err != nil {
		return keys.Key{}, fmt.Errorf("reading org: %w", err)
	}
	limit, err := s.AllocLimit(ctx, o)
	if err != nil {
		return keys.Key{}, err
	}
	k, err := s.opt.Store.UpdateKey(ctx, o.ID, name, keys.KeyPatch{MaxAPIRequests: keys.ChangeTo(max)}, limit)
	if err = s.madeAnyway(err); err != nil {
		return keys.Key{}, fmt.Errorf("changing key: %w", err)
	}
	s.opt.Auth.Revoke(keys.Revocation{OrgID: k.OrgID, KeyUID: k.UID})
	return k, nil
}
