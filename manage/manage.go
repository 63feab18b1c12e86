// Package manage holds the management operations that the operator API and
// the self-served APIs (seeds 000, 001, 003) share: creating and deleting
// keys under the organization's allocation rule, creating and changing
// organizations, and revoking what a change makes stale on this sidecar at
// once. It knows no envelope: fronts render its errors through
// gate.Classify.
package manage

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/keygate/keygate/gate"
	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/metrics"
	"github.com/keygate/keygate/quota"
)

// TimeFormat is the created_at format of seed 002 and the operator API.
const TimeFormat = "2006-01-02T15:04:05.000Z07:00"

// Options configure a Service. Store, Auth and Counter are required.
type Options struct {
	Store   keys.Store
	Auth    *keys.Authenticator
	Counter quota.Counter
	// Sealer seals the secrets of new keys so they can sign requests; nil
	// when signing is off. Auth must be built with the same Sealer.
	Sealer *keys.Sealer
	// StoreTimeout is the deadline of one store call on the request path
	// (default 250ms); management routes get a few of them (Context).
	StoreTimeout time.Duration
	Log          *zap.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Service runs management operations. Safe for concurrent use.
type Service struct {
	opt Options
	log *zap.Logger
}

// New returns a Service for o; a missing required option panics here.
func New(o Options) *Service {
	if o.Store == nil || o.Auth == nil || o.Counter == nil {
		panic("manage.New: Options.Store, Auth and Counter are required")
	}
	if o.StoreTimeout <= 0 {
		o.StoreTimeout = 250 * time.Millisecond
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Service{opt: o, log: o.Log.Named("manage")}
}

// Store is the key store the Service writes to, for the reads fronts make.
func (s *Service) Store() keys.Store { return s.opt.Store }

// Counter is the quota counter, for the usage fronts show.
func (s *Service) Counter() quota.Counter { return s.opt.Counter }

// Now is the Service's clock.
func (s *Service) Now() time.Time { return s.opt.Now() }

// CallContext bounds one request-path store call (a read a route makes
// right after authenticating).
func (s *Service) CallContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.opt.StoreTimeout)
}

// Context bounds a management route's store calls: a few request-path
// deadlines, since such a route makes several.
func (s *Service) Context(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, 4*s.opt.StoreTimeout+time.Second)
}

// ErrOrgExists is NewOrg's answer to a taken id or username; callers with
// their own wording (the partner routes) recognise it with errors.Is.
var ErrOrgExists = &gate.ClientError{Status: http.StatusConflict, Msg: "an organization with this id or username already exists"}

// orgIDPattern admits UUIDs and the short ids of seed 001 ("jack_001").
var orgIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// ValidOrgID reports whether id can name an organization: the pattern, and
// not a label value the metrics reserve.
func ValidOrgID(id string) bool { return orgIDPattern.MatchString(id) && !metrics.ReservedOrg(id) }

// NewOrg is what creating an organization asks for.
type NewOrg struct {
	ID             string `json:"id"`
	Name           string `json:"name"`
	Email          string `json:"email"`
	EmailVerified  bool   `json:"email_verified"`
	PlanID         *int64 `json:"plan_id"`
	Partner        bool   `json:"partner"`
	MaxAPIRequests *int64 `json:"max_api_requests"`
	Unlimited      bool   `json:"unlimited"`
	Username       string `json:"username"`
	Password       string `json:"password"`
	// RateLimit overrides the plan's org_rate_limit.
	RateLimit *keys.RateLimit `json:"rate_limit"`
}

// CreateOrg validates and creates an organization; partnerID is its
// creator (empty for the operator). Its store calls get their own deadline
// (Context), started after the password is hashed: argon2id takes long
// enough under load to eat a deadline it shared.
func (s *Service) CreateOrg(ctx context.Context, b NewOrg, partnerID string) (keys.Org, error) {
	if err := keys.ValidateName("name", b.Name); err != nil {
		return keys.Org{}, err
	}
	if err := ValidateEmail(b.Email); err != nil {
		return keys.Org{}, err
	}
	if b.PlanID == nil {
		return keys.Org{}, &keys.InvalidError{Field: "plan_id", Reason: "is required"}
	}
	if b.MaxAPIRequests != nil && *b.MaxAPIRequests < 0 {
		return keys.Org{}, &keys.InvalidError{Field: "max_api_requests", Reason: "must be null or at least 0"}
	}
	if b.RateLimit != nil {
		if err := b.RateLimit.Validate(); err != nil {
			return keys.Org{}, err
		}
	}
	id := b.ID
	if id == "" {
		var err error
		if id, err = keys.NewUUID(); err != nil {
			return keys.Org{}, err
		}
	} else if !ValidOrgID(id) {
		return keys.Org{}, &keys.InvalidError{Field: "id", Reason: "want 1 to 64 letters, digits, '.', '_' or '-' (a UUID fits), not none or other"}
	}
	o := keys.Org{ID: id, Name: b.Name, Email: b.Email, EmailVerified: b.EmailVerified, PlanID: *b.PlanID,
		MaxAPIRequests: b.MaxAPIRequests, RateLimit: b.RateLimit, Unlimited: b.Unlimited, Partner: b.Partner, PartnerID: partnerID,
		CreatedAt: s.opt.Now().UTC()}
	if b.Username != "" || b.Password != "" {
		if err := keys.ValidateName("username", b.Username); err != nil {
			return keys.Org{}, err
		}
		hash, err := keys.HashPassword(b.Password)
		if err != nil {
			return keys.Org{}, err
		}
		o.Username, o.PasswordHash = b.Username, hash
	}
	ctx, cancel := s.Context(ctx)
	defer cancel()
	if _, err := s.ExistingPlan(ctx, *b.PlanID); err != nil {
		return keys.Org{}, err
	}
	if err := s.opt.Store.CreateOrg(ctx, o); err != nil {
		if errors.Is(err, keys.ErrConflict) {
			return keys.Org{}, ErrOrgExists
		}
		return keys.Org{}, fmt.Errorf("creating org: %w", err)
	}
	return o, nil
}

// ValidateEmail accepts an empty address or one that looks like one.
func ValidateEmail(e string) error {
	if e == "" {
		return nil
	}
	at := strings.LastIndexByte(e, '@')
	if len(e) > 254 || at < 1 || at == len(e)-1 || strings.ContainsAny(e, " \t\r\n<>") {
		return &keys.InvalidError{Field: "email", Reason: "not an email address"}
	}
	return nil
}

// UpdateOrg writes an organization (compare-and-set on its revision) and
// forgets its cached principals here at once; the store tells the other
// sidecars.
func (s *Service) UpdateOrg(ctx context.Context, o *keys.Org) error {
	if err := s.madeAnyway(s.opt.Store.UpdateOrg(ctx, o)); err != nil {
		return fmt.Errorf("updating org: %w", err)
	}
	s.opt.Auth.Revoke(keys.Revocation{OrgID: o.ID})
	return nil
}

// ExistingPlan reads a plan a request names; an unknown one is a 404 that
// says so.
func (s *Service) ExistingPlan(ctx context.Context, id int64) (keys.Plan, error) {
	pl, err := s.opt.Store.Plan(ctx, id)
	if errors.Is(err, keys.ErrNotFound) {
		return keys.Plan{}, &gate.ClientError{Status: http.StatusNotFound, Msg: fmt.Sprintf("plan %d does not exist", id)}
	}
	if err != nil {
		return keys.Plan{}, fmt.Errorf("reading plan: %w", err)
	}
	return pl, nil
}

// OrgConflict words a concurrent change of an organization for the client.
func OrgConflict(err error) error {
	if errors.Is(err, keys.ErrConflict) {
		return &gate.ClientError{Status: http.StatusConflict, Msg: "the organization was changed concurrently; read it again and retry"}
	}
	return err
}

// KeyConflict words a duplicate key name for the client.
func KeyConflict(err error, name string) error {
	if errors.Is(err, keys.ErrConflict) {
		return &gate.ClientError{Status: http.StatusConflict, Msg: fmt.Sprintf("a key named %q already exists", name)}
	}
	return err
}

// Quota is an organization's request quota as seed 002 and the operator API
// show it. The quota fields are null for an unlimited organization: there
// is no number to give.
type Quota struct {
	TotalUsage           int64  `json:"total_usage"`
	TotalQuota           *int64 `json:"total_quota"`
	CurrentUsage         int64  `json:"current_usage"`
	MaxAPIRequests       *int64 `json:"max_api_requests"`
	AllocatedAPIKeyQuota int64  `json:"allocated_api_key_quota"`
	AvailableAPIKeyQuota *int64 `json:"available_api_key_quota"`
	Source               string `json:"source"`
	Unlimited            bool   `json:"unlimited"`
}

// OrgQuota builds an organization's Quota from its usage and the sum of its
// keys' maxima.
func OrgQuota(o keys.Org, pl keys.Plan, usage quota.Usage, allocated int64) Quota {
	limit, source := o.RequestQuota(pl)
	q := Quota{
		TotalUsage:           usage.Org,
		CurrentUsage:         usage.Org,
		AllocatedAPIKeyQuota: allocated,
		Source:               source,
		Unlimited:            limit < 0,
	}
	if limit >= 0 {
		avail := max(limit-allocated, 0)
		q.TotalQuota, q.MaxAPIRequests, q.AvailableAPIKeyQuota = &limit, &limit, &avail
	}
	return q
}

// OrgUsage reads an organization's request usage and allocation.
func (s *Service) OrgUsage(ctx context.Context, o keys.Org) (Quota, error) {
	pl, err := s.opt.Store.Plan(ctx, o.PlanID)
	if err != nil && !errors.Is(err, keys.ErrNotFound) {
		return Quota{}, fmt.Errorf("reading plan: %w", err)
	}
	u, err := s.opt.Counter.Usage(ctx, o.ID, "", gate.PlanPeriod(pl), s.opt.Now())
	if err != nil {
		return Quota{}, fmt.Errorf("reading usage: %w", err)
	}
	ks, err := s.opt.Store.Keys(ctx, o.ID)
	if err != nil {
		return Quota{}, fmt.Errorf("listing keys: %w", err)
	}
	return OrgQuota(o, pl, u, keys.Allocated(ks)), nil
}
