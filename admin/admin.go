// Package admin is the operator API (DESIGN.md "Operator API") on
// KEYGATE_ADMIN_ADDR, behind the admin token: plans, organizations and keys.
// Errors use the data path's JSON shape. One audit log line per request.
package admin

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/keygate/keygate/gate"
	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/listener"
	"github.com/keygate/keygate/manage"
	"github.com/keygate/keygate/meter"
	"github.com/keygate/keygate/metrics"
	"github.com/keygate/keygate/quota"
)

type planBody struct {
	ID             *int64           `json:"id"`
	Name           string           `json:"name"`
	Price          string           `json:"price"`
	Period         string           `json:"period"`
	MaxAPIRequests *int64           `json:"max_api_requests"`
	Limits         map[string]int64 `json:"limits"`
	KeyRateLimit   *keys.RateLimit  `json:"key_rate_limit"`
	OrgRateLimit   *keys.RateLimit  `json:"org_rate_limit"`
}

// orgPatch changes an organization; absent fields stay as they are.
type orgPatch struct {
	Name           *string         `json:"name"`
	Email          *string         `json:"email"`
	EmailVerified  *bool           `json:"email_verified"`
	PlanID         *int64          `json:"plan_id"`
	Partner        *bool           `json:"partner"`
	MaxAPIRequests json.RawMessage `json:"max_api_requests"`
	Unlimited      *bool           `json:"unlimited"`
	// RateLimit overrides the plan's org_rate_limit; null goes back to it.
	RateLimit keys.Change[*keys.RateLimit] `json:"rate_limit"`
}

type keyBody struct {
	Name           string          `json:"name"`
	Permissions    []string        `json:"permissions"`
	MaxAPIRequests *int64          `json:"max_api_requests"`
	Comment        string          `json:"comment"`
	RateLimit      *keys.RateLimit `json:"rate_limit"`
	ExpiresAt      *time.Time      `json:"expires_at"`
	Enabled        *bool           `json:"enabled"`
}

// rotateBody asks for a rotation; the previous secret keeps working for
// Grace (a Go duration, default 0s).
type rotateBody struct {
	Grace string `json:"grace"`
}

// orgView is an organization as the operator API shows it: never the
// password hash.
type orgView struct {
	ID             string          `json:"id"`
	Name           string          `json:"name"`
	Email          string          `json:"email"`
	EmailVerified  bool            `json:"email_verified"`
	PlanID         int64           `json:"plan_id"`
	NextPlanID     *int64          `json:"next_plan_id"`
	Partner        bool            `json:"partner"`
	PartnerID      string          `json:"partner_id,omitempty"`
	MaxAPIRequests *int64          `json:"max_api_requests"`
	RateLimit      *keys.RateLimit `json:"rate_limit"`
	Unlimited      bool            `json:"unlimited"`
	Username       string          `json:"username,omitempty"`
	CreatedAt      string          `json:"created_at"`
	Usage          *manage.Quota   `json:"usage,omitempty"`
}

// keyView is a key as listed: never a secret.
type keyView struct {
	UID            string          `json:"uid"`
	Name           string          `json:"name"`
	AccessKey      string          `json:"access_key"`
	AccessSecret   string          `json:"access_secret,omitempty"`
	Permissions    []string        `json:"permissions"`
	MaxAPIRequests *int64          `json:"max_api_requests"`
	RateLimit      *keys.RateLimit `json:"rate_limit"`
	ExpiresAt      *string         `json:"expires_at"`
	Enabled        bool            `json:"enabled"`
	LastUsedAt     *string         `json:"last_used_at"`
	Comment        string          `json:"comment,omitempty"`
	CreatedAt      string          `json:"created_at"`
}

func newKeyView(k keys.Key, secret string) keyView {
	perms := make([]string, len(k.Permissions))
	for i, p := range k.Permissions {
		perms[i] = string(p)
	}
	return keyView{UID: k.UID, Name: k.Name, AccessKey: k.UID, AccessSecret: secret, Permissions: perms,
		MaxAPIRequests: k.MaxAPIRequests, RateLimit: k.RateLimit, ExpiresAt: rfc3339(k.ExpiresAt), Enabled: k.Enabled(),
		LastUsedAt: rfc3339(k.LastUsedAt), Comment: k.Comment, CreatedAt: k.CreatedAt.UTC().Format(manage.TimeFormat)}
}

// rfc3339 formats an optional instant in UTC; nil stays null.
func rfc3339(t *time.Time) *string {
	if t == nil {
		return nil
	}
	s := t.UTC().Format(time.RFC3339)
	return &s
}

func newOrgView(o keys.Org) orgView {
	return orgView{ID: o.ID, Name: o.Name, Email: o.Email, EmailVerified: o.EmailVerified, PlanID: o.PlanID,
		NextPlanID: o.NextPlanID, Partner: o.Partner, PartnerID: o.PartnerID, MaxAPIRequests: o.MaxAPIRequests,
		RateLimit: o.RateLimit, Unlimited: o.Unlimited, Username: o.Username, CreatedAt: o.CreatedAt.UTC().Format(manage.TimeFormat)}
}

// Options configure the operator API. Manage and Token are required.
type Options struct {
	Manage *manage.Service
	// Token is the admin token, compared in constant time. An empty token
	// is refused by the caller: the API is off.
	Token string
	// Public are routes served without the token (GET /openapi.json):
	// pattern → handler. They must hold no secret.
	Public map[string]http.Handler
	Log    *zap.Logger
}

// API is the operator API.
type API struct {
	opt Options
	log *zap.Logger
}

// New returns the operator API guarded by o.Token.
func New(o Options) http.Handler {
	if o.Manage == nil || o.Token == "" {
		panic("admin.New: Options.Manage and Token are required")
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	a := &API{opt: o, log: o.Log.Named("admin")}
	return a.handler()
}

func (a *API) handler() http.Handler {
	mux := http.NewServeMux()
	handle := func(pattern string, fn func(w http.ResponseWriter, r *http.Request) error) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			if err := fn(w, r); err != nil {
				p := gate.Classify(err, a.opt.Manage.Now())
				if p.Internal {
					a.log.Error("operator request failed", zap.String("path", r.URL.Path), zap.Error(err))
				}
				gate.WriteDataProblem(w, p)
			}
		})
	}
	handle("POST /admin/v1/plans", a.adminCreatePlan)
	handle("GET /admin/v1/plans", a.adminListPlans)
	handle("PATCH /admin/v1/plans/{id}", a.adminPatchPlan)
	handle("POST /admin/v1/orgs", a.adminCreateOrg)
	handle("GET /admin/v1/orgs", a.adminListOrgs)
	handle("GET /admin/v1/orgs/{id}", a.adminGetOrg)
	handle("PATCH /admin/v1/orgs/{id}", a.adminPatchOrg)
	handle("GET /admin/v1/orgs/{id}/suborgs", a.adminSubOrgs)
	handle("POST /admin/v1/orgs/{id}/keys", a.adminCreateKey)
	handle("GET /admin/v1/orgs/{id}/keys", a.adminListKeys)
	handle("GET /admin/v1/orgs/{id}/keys/{name}", a.adminGetKey)
	handle("PATCH /admin/v1/orgs/{id}/keys/{name}", a.adminPatchKey)
	handle("POST /admin/v1/orgs/{id}/keys/{name}/rotate", a.adminRotateKey)
	handle("DELETE /admin/v1/orgs/{id}/keys/{name}", a.adminDeleteKey)
	handle("/", func(w http.ResponseWriter, r *http.Request) error {
		return &gate.ClientError{Status: http.StatusNotFound, Msg: "no such operator route"}
	})
	public := http.NewServeMux()
	for pattern, h := range a.opt.Public {
		public.Handle(pattern, h)
	}
	want := sha256.Sum256([]byte(a.opt.Token))
	audit := a.log
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := listener.NewWriter(w)
		got, _ := gate.BearerToken(r.Header.Get(gate.HeaderAuthorization))
		sum := sha256.Sum256([]byte(got))
		if h, pattern := public.Handler(r); pattern != "" {
			h.ServeHTTP(sw, r)
		} else if got == "" || subtle.ConstantTimeCompare(sum[:], want[:]) != 1 {
			gate.WriteDataProblem(sw, gate.Problem{Status: http.StatusUnauthorized, Message: "Valid admin token required", Outcome: metrics.OutcomeInvalidCredential})
		} else {
			mux.ServeHTTP(sw, r)
		}
		// One audit line per operator request: what was asked and how it
		// ended, never the token or the body (it may hold a password).
		status := sw.Status
		if status == 0 {
			status = http.StatusOK
		}
		audit.Info("request", zap.String("method", r.Method), zap.String("path", r.URL.Path),
			zap.Int("status", status), zap.Duration("duration", time.Since(start)),
			zap.String("remote_addr", r.RemoteAddr))
	})
}

func (a *API) adminCreatePlan(w http.ResponseWriter, r *http.Request) error {
	var b planBody
	if err := gate.DecodeJSON(w, r, &b); err != nil {
		return err
	}
	pl, err := validatePlan(b)
	if err != nil {
		return err
	}
	ctx, cancel := a.opt.Manage.Context(r.Context())
	defer cancel()
	if err := a.opt.Manage.Store().CreatePlan(ctx, pl); err != nil {
		if errors.Is(err, keys.ErrConflict) {
			return &gate.ClientError{Status: http.StatusConflict, Msg: fmt.Sprintf("plan %d already exists", pl.ID)}
		}
		return fmt.Errorf("creating plan: %w", err)
	}
	gate.WriteJSON(w, http.StatusCreated, pl)
	return nil
}

func validatePlan(b planBody) (keys.Plan, error) {
	if b.ID == nil || *b.ID <= 0 {
		return keys.Plan{}, &keys.InvalidError{Field: "id", Reason: "a positive integer is required"}
	}
	if err := keys.ValidateName("name", b.Name); err != nil {
		return keys.Plan{}, err
	}
	if len(b.Price) > keys.MaxNameLen {
		return keys.Plan{}, &keys.InvalidError{Field: "price", Reason: "too long"}
	}
	if _, err := quota.ParsePeriod(b.Period); err != nil {
		return keys.Plan{}, &keys.InvalidError{Field: "period", Reason: err.Error()}
	}
	if b.MaxAPIRequests != nil && *b.MaxAPIRequests < 0 {
		return keys.Plan{}, &keys.InvalidError{Field: "max_api_requests", Reason: "must be null or at least 0"}
	}
	if err := validateLimits(b.Limits); err != nil {
		return keys.Plan{}, err
	}
	for field, l := range map[string]*keys.RateLimit{"key_rate_limit": b.KeyRateLimit, "org_rate_limit": b.OrgRateLimit} {
		if l != nil {
			if err := l.Validate(); err != nil {
				return keys.Plan{}, rateLimitField(field, err)
			}
		}
	}
	period := b.Period
	if period == "" {
		period = "month"
	}
	return keys.Plan{ID: *b.ID, Name: b.Name, Price: b.Price, Period: period, MaxAPIRequests: b.MaxAPIRequests, Limits: b.Limits,
		KeyRateLimit: b.KeyRateLimit, OrgRateLimit: b.OrgRateLimit}, nil
}

// validateLimits checks the meter names and values of a plan's limits.
func validateLimits(limits map[string]int64) error {
	for name, v := range limits {
		if !meter.ValidName(name) || name == meter.Requests {
			return &keys.InvalidError{Field: "limits", Reason: fmt.Sprintf("meter %q: want lower-case letters, digits and _ (requests is max_api_requests)", name)}
		}
		if v < 0 {
			return &keys.InvalidError{Field: "limits", Reason: fmt.Sprintf("meter %q: must be at least 0", name)}
		}
	}
	return nil
}

// rateLimitField names the field a rate limit's problem is in.
func rateLimitField(field string, err error) error {
	var inv *keys.InvalidError
	if errors.As(err, &inv) {
		return inv.In(field)
	}
	return err
}

func (a *API) adminPatchPlan(w http.ResponseWriter, r *http.Request) error {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		return &gate.ClientError{Status: http.StatusNotFound, Msg: "no plan with this id"}
	}
	var b keys.PlanPatch
	if err := gate.DecodeJSON(w, r, &b); err != nil {
		return err
	}
	if b.Limits.Set {
		if err := validateLimits(b.Limits.Value); err != nil {
			return err
		}
	}
	ctx, cancel := a.opt.Manage.Context(r.Context())
	defer cancel()
	pl, err := a.opt.Manage.UpdatePlan(ctx, id, b)
	if err != nil {
		return fmt.Errorf("plan %d: %w", id, err)
	}
	gate.WriteJSON(w, http.StatusOK, pl)
	return nil
}

func (a *API) adminListPlans(w http.ResponseWriter, r *http.Request) error {
	ctx, cancel := a.opt.Manage.Context(r.Context())
	defer cancel()
	pls, err := a.opt.Manage.Store().Plans(ctx)
	if err != nil {
		return fmt.Errorf("listing plans: %w", err)
	}
	if pls == nil {
		pls = []keys.Plan{}
	}
	gate.WriteJSON(w, http.StatusOK, pls)
	return nil
}

func (a *API) adminCreateOrg(w http.ResponseWriter, r *http.Request) error {
	var b manage.NewOrg
	if err := gate.DecodeJSON(w, r, &b); err != nil {
		return err
	}
	o, err := a.opt.Manage.CreateOrg(r.Context(), b, "")
	if err != nil {
		return err
	}
	gate.WriteJSON(w, http.StatusCreated, newOrgView(o))
	return nil
}

func (a *API) adminListOrgs(w http.ResponseWriter, r *http.Request) error {
	ctx, cancel := a.opt.Manage.Context(r.Context())
	defer cancel()
	os, err := a.opt.Manage.Store().Orgs(ctx)
	if err != nil {
		return fmt.Errorf("listing orgs: %w", err)
	}
	return a.writeOrgs(w, os)
}

func (a *API) adminSubOrgs(w http.ResponseWriter, r *http.Request) error {
	ctx, cancel := a.opt.Manage.Context(r.Context())
	defer cancel()
	if _, err := a.opt.Manage.Store().Org(ctx, r.PathValue("id")); err != nil {
		return fmt.Errorf("reading org: %w", err)
	}
	os, err := a.opt.Manage.Store().SubOrgs(ctx, r.PathValue("id"))
	if err != nil {
		return fmt.Errorf("listing sub-accounts: %w", err)
	}
	return a.writeOrgs(w, os)
}

func (a *API) writeOrgs(w http.ResponseWriter, os []keys.Org) error {
	now := a.opt.Manage.Now()
	out := make([]orgView, len(os))
	for i, o := range os {
		// The plan in effect: a scheduled switch that is due counts, as it
		// does on the data path, whether or not a reader wrote it back yet.
		o, _ = o.ApplyScheduledPlan(now)
		out[i] = newOrgView(o)
	}
	gate.WriteJSON(w, http.StatusOK, out)
	return nil
}

func (a *API) adminGetOrg(w http.ResponseWriter, r *http.Request) error {
	ctx, cancel := a.opt.Manage.Context(r.Context())
	defer cancel()
	o, err := a.opt.Manage.Store().Org(ctx, r.PathValue("id"))
	if err != nil {
		return fmt.Errorf("reading org: %w", err)
	}
	o, _ = o.ApplyScheduledPlan(a.opt.Manage.Now())
	q, err := a.opt.Manage.OrgUsage(ctx, o)
	if err != nil {
		return err
	}
	v := newOrgView(o)
	v.Usage = &q
	gate.WriteJSON(w, http.StatusOK, v)
	return nil
}

func (a *API) adminPatchOrg(w http.ResponseWriter, r *http.Request) error {
	var b orgPatch
	if err := gate.DecodeJSON(w, r, &b); err != nil {
		return err
	}
	ctx, cancel := a.opt.Manage.Context(r.Context())
	defer cancel()
	o, err := a.opt.Manage.Store().Org(ctx, r.PathValue("id"))
	if err != nil {
		return fmt.Errorf("reading org: %w", err)
	}
	if b.Name != nil {
		if err := keys.ValidateName("name", *b.Name); err != nil {
			return err
		}
		o.Name = *b.Name
	}
	if b.Email != nil {
		if err := manage.ValidateEmail(*b.Email); err != nil {
			return err
		}
		o.Email = *b.Email
	}
	if b.EmailVerified != nil {
		o.EmailVerified = *b.EmailVerified
	}
	if b.PlanID != nil {
		if _, err := a.opt.Manage.ExistingPlan(ctx, *b.PlanID); err != nil {
			return err
		}
		o.PlanID, o.NextPlanID = *b.PlanID, nil
	}
	if b.Partner != nil {
		o.Partner = *b.Partner
	}
	if b.Unlimited != nil {
		o.Unlimited = *b.Unlimited
	}
	if b.RateLimit.Set {
		if l := b.RateLimit.Value; l != nil {
			if err := l.Validate(); err != nil {
				return rateLimitField("rate_limit", err)
			}
		}
		o.RateLimit = b.RateLimit.Value
	}
	if len(b.MaxAPIRequests) > 0 {
		var m *int64
		if err := json.Unmarshal(b.MaxAPIRequests, &m); err != nil || (m != nil && *m < 0) {
			return &keys.InvalidError{Field: "max_api_requests", Reason: "must be null or an integer of at least 0"}
		}
		o.MaxAPIRequests = m
	}
	if err := a.opt.Manage.UpdateOrg(ctx, &o); err != nil {
		return manage.OrgConflict(err)
	}
	gate.WriteJSON(w, http.StatusOK, newOrgView(o))
	return nil
}

func (a *API) adminCreateKey(w http.ResponseWriter, r *http.Request) error {
	var b keyBody
	if err := gate.DecodeJSON(w, r, &b); err != nil {
		return err
	}
	perms, err := keys.ParsePermissions(b.Permissions)
	if err != nil {
		return err
	}
	ctx, cancel := a.opt.Manage.Context(r.Context())
	defer cancel()
	k, secret, err := a.opt.Manage.CreateKey(ctx, manage.NewKey{OrgID: r.PathValue("id"), Name: b.Name, Permissions: perms,
		Max: b.MaxAPIRequests, Comment: b.Comment, RateLimit: b.RateLimit, ExpiresAt: b.ExpiresAt, Disabled: b.Enabled != nil && !*b.Enabled})
	if err != nil {
		return manage.KeyConflict(err, b.Name)
	}
	gate.WriteJSON(w, http.StatusCreated, newKeyView(k, secret))
	return nil
}

func (a *API) adminListKeys(w http.ResponseWriter, r *http.Request) error {
	ctx, cancel := a.opt.Manage.Context(r.Context())
	defer cancel()
	if _, err := a.opt.Manage.Store().Org(ctx, r.PathValue("id")); err != nil {
		return fmt.Errorf("reading org: %w", err)
	}
	ks, err := a.opt.Manage.Store().Keys(ctx, r.PathValue("id"))
	if err != nil {
		return fmt.Errorf("listing keys: %w", err)
	}
	out := make([]keyView, len(ks))
	for i, k := range ks {
		out[i] = newKeyView(k, "")
	}
	gate.WriteJSON(w, http.StatusOK, out)
	return nil
}

func (a *API) adminGetKey(w http.ResponseWriter, r *http.Request) error {
	ctx, cancel := a.opt.Manage.Context(r.Context())
	defer cancel()
	k, err := a.opt.Manage.Store().KeyByName(ctx, r.PathValue("id"), r.PathValue("name"))
	if err != nil {
		return fmt.Errorf("reading key: %w", err)
	}
	gate.WriteJSON(w, http.StatusOK, newKeyView(k, ""))
	return nil
}

// adminPatchKey changes the fields the body names; absent fields stay as
// they are, null clears (or, for rate_limit, goes back to the plan's).
func (a *API) adminPatchKey(w http.ResponseWriter, r *http.Request) error {
	var b keys.KeyPatch
	if err := gate.DecodeJSON(w, r, &b); err != nil {
		return err
	}
	ctx, cancel := a.opt.Manage.Context(r.Context())
	defer cancel()
	k, err := a.opt.Manage.UpdateKey(ctx, r.PathValue("id"), r.PathValue("name"), b)
	if err != nil {
		return err
	}
	gate.WriteJSON(w, http.StatusOK, newKeyView(k, ""))
	return nil
}

// rotation is the answer to a rotation: the new secret, shown once.
type rotation struct {
	UID                     string `json:"uid"`
	Name                    string `json:"name"`
	AccessKey               string `json:"access_key"`
	AccessSecret            string `json:"access_secret"`
	PreviousSecretExpiresAt string `json:"previous_secret_expires_at"`
}

func (a *API) adminRotateKey(w http.ResponseWriter, r *http.Request) error {
	var b rotateBody
	if r.ContentLength != 0 {
		if err := gate.DecodeJSON(w, r, &b); err != nil {
			return err
		}
	}
	grace := time.Duration(0)
	if b.Grace != "" {
		d, err := time.ParseDuration(b.Grace)
		if err != nil {
			return &keys.InvalidError{Field: "grace", Reason: "want a Go duration such as 1h or 30m"}
		}
		grace = d
	}
	ctx, cancel := a.opt.Manage.Context(r.Context())
	defer cancel()
	k, secret, until, err := a.opt.Manage.RotateKey(ctx, r.PathValue("id"), r.PathValue("name"), grace)
	if err != nil {
		return err
	}
	gate.WriteJSON(w, http.StatusOK, rotation{UID: k.UID, Name: k.Name, AccessKey: k.UID, AccessSecret: secret,
		PreviousSecretExpiresAt: until.UTC().Format(time.RFC3339)})
	return nil
}

func (a *API) adminDeleteKey(w http.ResponseWriter, r *http.Request) error {
	ctx, cancel := a.opt.Manage.Context(r.Context())
	defer cancel()
	if _, err := a.opt.Manage.DeleteKey(ctx, r.PathValue("id"), r.PathValue("name")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
