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
}

type keyBody struct {
	Name           string   `json:"name"`
	Permissions    []string `json:"permissions"`
	MaxAPIRequests *int64   `json:"max_api_requests"`
	Comment        string   `json:"comment"`
}

type keyPatch struct {
	MaxAPIRequests *int64 `json:"max_api_requests"`
}

// orgView is an organization as the operator API shows it: never the
// password hash.
type orgView struct {
	ID             string        `json:"id"`
	Name           string        `json:"name"`
	Email          string        `json:"email"`
	EmailVerified  bool          `json:"email_verified"`
	PlanID         int64         `json:"plan_id"`
	NextPlanID     *int64        `json:"next_plan_id"`
	Partner        bool          `json:"partner"`
	PartnerID      string        `json:"partner_id,omitempty"`
	MaxAPIRequests *int64        `json:"max_api_requests"`
	Unlimited      bool          `json:"unlimited"`
	Username       string        `json:"username,omitempty"`
	CreatedAt      string        `json:"created_at"`
	Usage          *manage.Quota `json:"usage,omitempty"`
}

// keyView is a key as listed: never a secret.
type keyView struct {
	UID            string   `json:"uid"`
	Name           string   `json:"name"`
	AccessKey      string   `json:"access_key"`
	AccessSecret   string   `json:"access_secret,omitempty"`
	Permissions    []string `json:"permissions"`
	MaxAPIRequests *int64   `json:"max_api_requests"`
	Comment        string   `json:"comment,omitempty"`
	CreatedAt      string   `json:"created_at"`
}

func newKeyView(k keys.Key, secret string) keyView {
	perms := make([]string, len(k.Permissions))
	for i, p := range k.Permissions {
		perms[i] = string(p)
	}
	return keyView{UID: k.UID, Name: k.Name, AccessKey: k.UID, AccessSecret: secret, Permissions: perms,
		MaxAPIRequests: k.MaxAPIRequests, Comment: k.Comment, CreatedAt: k.CreatedAt.UTC().Format(manage.TimeFormat)}
}

func newOrgView(o keys.Org) orgView {
	return orgView{ID: o.ID, Name: o.Name, Email: o.Email, EmailVerified: o.EmailVerified, PlanID: o.PlanID,
		NextPlanID: o.NextPlanID, Partner: o.Partner, PartnerID: o.PartnerID, MaxAPIRequests: o.MaxAPIRequests,
		Unlimited: o.Unlimited, Username: o.Username, CreatedAt: o.CreatedAt.UTC().Format(manage.TimeFormat)}
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
	handle("POST /admin/v1/orgs", a.adminCreateOrg)
	handle("GET /admin/v1/orgs", a.adminListOrgs)
	handle("GET /admin/v1/orgs/{id}", a.adminGetOrg)
	handle("PATCH /admin/v1/orgs/{id}", a.adminPatchOrg)
	handle("GET /admin/v1/orgs/{id}/suborgs", a.adminSubOrgs)
	handle("POST /admin/v1/orgs/{id}/keys", a.adminCreateKey)
	handle("GET /admin/v1/orgs/{id}/keys", a.adminListKeys)
	handle("PATCH /admin/v1/orgs/{id}/keys/{name}", a.adminPatchKey)
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
	for name, v := range b.Limits {
		if !meter.ValidName(name) || name == meter.Requests {
			return keys.Plan{}, &keys.InvalidError{Field: "limits", Reason: fmt.Sprintf("meter %q: want lower-case letters, digits and _ (requests is max_api_requests)", name)}
		}
		if v < 0 {
			return keys.Plan{}, &keys.InvalidError{Field: "limits", Reason: fmt.Sprintf("meter %q: must be at least 0", name)}
		}
	}
	period := b.Period
	if period == "" {
		period = "month"
	}
	return keys.Plan{ID: *b.ID, Name: b.Name, Price: b.Price, Period: period, MaxAPIRequests: b.MaxAPIRequests, Limits: b.Limits}, nil
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
	ctx, cancel := a.opt.Manage.Context(r.Context())
	defer cancel()
	o, err := a.opt.Manage.CreateOrg(ctx, b, "")
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
	return writeOrgs(w, os)
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
	return writeOrgs(w, os)
}

func writeOrgs(w http.ResponseWriter, os []keys.Org) error {
	out := make([]orgView, len(os))
	for i, o := range os {
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
	k, secret, err := a.opt.Manage.CreateKey(ctx, manage.NewKey{OrgID: r.PathValue("id"), Name: b.Name, Permissions: perms, Max: b.MaxAPIRequests, Comment: b.Comment})
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

func (a *API) adminPatchKey(w http.ResponseWriter, r *http.Request) error {
	var b keyPatch
	if err := gate.DecodeJSON(w, r, &b); err != nil {
		return err
	}
	ctx, cancel := a.opt.Manage.Context(r.Context())
	defer cancel()
	k, err := a.opt.Manage.SetKeyMax(ctx, r.PathValue("id"), r.PathValue("name"), b.MaxAPIRequests)
	if err != nil {
		return err
	}
	gate.WriteJSON(w, http.StatusOK, newKeyView(k, ""))
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
