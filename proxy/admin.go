package proxy

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/quota"
)

// The operator API (DESIGN.md "Operator API") on KEYGATE_ADMIN_ADDR. Errors
// use the data path's JSON shape.

type planBody struct {
	ID             *int64           `json:"id"`
	Name           string           `json:"name"`
	Price          string           `json:"price"`
	Period         string           `json:"period"`
	MaxAPIRequests *int64           `json:"max_api_requests"`
	Limits         map[string]int64 `json:"limits"`
}

type orgBody struct {
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
	Usage          *accountQuota `json:"usage,omitempty"`
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
		MaxAPIRequests: k.MaxAPIRequests, Comment: k.Comment, CreatedAt: k.CreatedAt.UTC().Format(isoMillis)}
}

func newOrgView(o keys.Org) orgView {
	return orgView{ID: o.ID, Name: o.Name, Email: o.Email, EmailVerified: o.EmailVerified, PlanID: o.PlanID,
		NextPlanID: o.NextPlanID, Partner: o.Partner, PartnerID: o.PartnerID, MaxAPIRequests: o.MaxAPIRequests,
		Unlimited: o.Unlimited, Username: o.Username, CreatedAt: o.CreatedAt.UTC().Format(isoMillis)}
}

// errOrgExists is newOrg's answer to a taken id or username; callers with
// their own wording (the partner routes) recognise it with errors.Is.
var errOrgExists = &badRequestError{status: http.StatusConflict, msg: "an organization with this id or username already exists"}

// orgIDPattern admits UUIDs and the short ids of seed 001 ("jack_001").
var orgIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// AdminHandler returns the operator API guarded by token (compared in
// constant time). An empty token is refused by the caller: the API is off.
func (h *Handler) AdminHandler(token string) http.Handler {
	mux := http.NewServeMux()
	handle := func(pattern string, fn func(w http.ResponseWriter, r *http.Request) error) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			if err := fn(w, r); err != nil {
				p := classify(err, h.opt.Now())
				if p.internal {
					h.log.Error("operator request failed", zap.String("path", r.URL.Path), zap.Error(err))
				}
				writeDataProblem(w, p)
			}
		})
	}
	handle("POST /admin/v1/plans", h.adminCreatePlan)
	handle("GET /admin/v1/plans", h.adminListPlans)
	handle("POST /admin/v1/orgs", h.adminCreateOrg)
	handle("GET /admin/v1/orgs", h.adminListOrgs)
	handle("GET /admin/v1/orgs/{id}", h.adminGetOrg)
	handle("PATCH /admin/v1/orgs/{id}", h.adminPatchOrg)
	handle("GET /admin/v1/orgs/{id}/suborgs", h.adminSubOrgs)
	handle("POST /admin/v1/orgs/{id}/keys", h.adminCreateKey)
	handle("GET /admin/v1/orgs/{id}/keys", h.adminListKeys)
	handle("PATCH /admin/v1/orgs/{id}/keys/{name}", h.adminPatchKey)
	handle("DELETE /admin/v1/orgs/{id}/keys/{name}", h.adminDeleteKey)
	handle("/", func(w http.ResponseWriter, r *http.Request) error {
		return &badRequestError{status: http.StatusNotFound, msg: "no such operator route"}
	})
	want := sha256.Sum256([]byte(token))
	audit := h.opt.Log.Named("admin")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		got, _ := bearerToken(r.Header.Get(headerAuthorization))
		sum := sha256.Sum256([]byte(got))
		if got == "" || subtle.ConstantTimeCompare(sum[:], want[:]) != 1 {
			writeDataProblem(sw, problem{status: http.StatusUnauthorized, message: "Valid admin token required", outcome: outcomeInvalidCredential})
		} else {
			mux.ServeHTTP(sw, r)
		}
		// One audit line per operator request: what was asked and how it
		// ended, never the token or the body (it may hold a password).
		status := sw.status
		if status == 0 {
			status = http.StatusOK
		}
		audit.Info("request", zap.String("method", r.Method), zap.String("path", r.URL.Path),
			zap.Int("status", status), zap.Duration("duration", time.Since(start)),
			zap.String("remote_addr", r.RemoteAddr))
	})
}

func (h *Handler) adminCreatePlan(w http.ResponseWriter, r *http.Request) error {
	var b planBody
	if err := decodeJSON(w, r, &b); err != nil {
		return err
	}
	pl, err := validatePlan(b)
	if err != nil {
		return err
	}
	ctx, cancel := h.storeCtx(r.Context())
	defer cancel()
	if err := h.opt.Store.CreatePlan(ctx, pl); err != nil {
		if errors.Is(err, keys.ErrConflict) {
			return &badRequestError{status: http.StatusConflict, msg: fmt.Sprintf("plan %d already exists", pl.ID)}
		}
		return fmt.Errorf("creating plan: %w", err)
	}
	writeJSON(w, http.StatusCreated, pl)
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
		if !validMeterName(name) || name == meterRequests {
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

func (h *Handler) adminListPlans(w http.ResponseWriter, r *http.Request) error {
	ctx, cancel := h.storeCtx(r.Context())
	defer cancel()
	pls, err := h.opt.Store.Plans(ctx)
	if err != nil {
		return fmt.Errorf("listing plans: %w", err)
	}
	if pls == nil {
		pls = []keys.Plan{}
	}
	writeJSON(w, http.StatusOK, pls)
	return nil
}

func (h *Handler) adminCreateOrg(w http.ResponseWriter, r *http.Request) error {
	var b orgBody
	if err := decodeJSON(w, r, &b); err != nil {
		return err
	}
	ctx, cancel := h.storeCtx(r.Context())
	defer cancel()
	o, err := h.newOrg(ctx, b, "")
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, newOrgView(o))
	return nil
}

// newOrg validates and creates an organization; partnerID is its creator.
func (h *Handler) newOrg(ctx context.Context, b orgBody, partnerID string) (keys.Org, error) {
	if err := keys.ValidateName("name", b.Name); err != nil {
		return keys.Org{}, err
	}
	if err := validateEmail(b.Email); err != nil {
		return keys.Org{}, err
	}
	if b.PlanID == nil {
		return keys.Org{}, &keys.InvalidError{Field: "plan_id", Reason: "is required"}
	}
	if b.MaxAPIRequests != nil && *b.MaxAPIRequests < 0 {
		return keys.Org{}, &keys.InvalidError{Field: "max_api_requests", Reason: "must be null or at least 0"}
	}
	if _, err := h.opt.Store.Plan(ctx, *b.PlanID); err != nil {
		if errors.Is(err, keys.ErrNotFound) {
			return keys.Org{}, &badRequestError{status: http.StatusNotFound, msg: fmt.Sprintf("plan %d does not exist", *b.PlanID)}
		}
		return keys.Org{}, fmt.Errorf("reading plan: %w", err)
	}
	id := b.ID
	if id == "" {
		var err error
		if id, err = keys.NewUUID(); err != nil {
			return keys.Org{}, err
		}
	} else if !orgIDPattern.MatchString(id) {
		return keys.Org{}, &keys.InvalidError{Field: "id", Reason: "want 1 to 64 letters, digits, '.', '_' or '-' (a UUID fits)"}
	}
	o := keys.Org{ID: id, Name: b.Name, Email: b.Email, EmailVerified: b.EmailVerified, PlanID: *b.PlanID,
		MaxAPIRequests: b.MaxAPIRequests, Unlimited: b.Unlimited, Partner: b.Partner, PartnerID: partnerID,
		CreatedAt: h.opt.Now().UTC()}
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
	if err := h.opt.Store.CreateOrg(ctx, o); err != nil {
		if errors.Is(err, keys.ErrConflict) {
			return keys.Org{}, errOrgExists
		}
		return keys.Org{}, fmt.Errorf("creating org: %w", err)
	}
	return o, nil
}

func validateEmail(e string) error {
	if e == "" {
		return nil
	}
	at := strings.LastIndexByte(e, '@')
	if len(e) > 254 || at < 1 || at == len(e)-1 || strings.ContainsAny(e, " \t\r\n<>") {
		return &keys.InvalidError{Field: "email", Reason: "not an email address"}
	}
	return nil
}

func (h *Handler) adminListOrgs(w http.ResponseWriter, r *http.Request) error {
	ctx, cancel := h.storeCtx(r.Context())
	defer cancel()
	os, err := h.opt.Store.Orgs(ctx)
	if err != nil {
		return fmt.Errorf("listing orgs: %w", err)
	}
	return writeOrgs(w, os)
}

func (h *Handler) adminSubOrgs(w http.ResponseWriter, r *http.Request) error {
	ctx, cancel := h.storeCtx(r.Context())
	defer cancel()
	if _, err := h.opt.Store.Org(ctx, r.PathValue("id")); err != nil {
		return fmt.Errorf("reading org: %w", err)
	}
	os, err := h.opt.Store.SubOrgs(ctx, r.PathValue("id"))
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
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (h *Handler) adminGetOrg(w http.ResponseWriter, r *http.Request) error {
	ctx, cancel := h.storeCtx(r.Context())
	defer cancel()
	o, err := h.opt.Store.Org(ctx, r.PathValue("id"))
	if err != nil {
		return fmt.Errorf("reading org: %w", err)
	}
	q, err := h.orgUsage(ctx, o)
	if err != nil {
		return err
	}
	v := newOrgView(o)
	v.Usage = &q
	writeJSON(w, http.StatusOK, v)
	return nil
}

// orgUsage reads an organization's request usage and allocation.
func (h *Handler) orgUsage(ctx context.Context, o keys.Org) (accountQuota, error) {
	pl, err := h.opt.Store.Plan(ctx, o.PlanID)
	if err != nil && !errors.Is(err, keys.ErrNotFound) {
		return accountQuota{}, fmt.Errorf("reading plan: %w", err)
	}
	u, err := h.opt.Counter.Usage(ctx, o.ID, "", planPeriod(pl), h.opt.Now())
	if err != nil {
		return accountQuota{}, fmt.Errorf("reading usage: %w", err)
	}
	ks, err := h.opt.Store.Keys(ctx, o.ID)
	if err != nil {
		return accountQuota{}, fmt.Errorf("listing keys: %w", err)
	}
	return orgQuota(o, pl, u, keys.Allocated(ks)), nil
}

func (h *Handler) adminPatchOrg(w http.ResponseWriter, r *http.Request) error {
	var b orgPatch
	if err := decodeJSON(w, r, &b); err != nil {
		return err
	}
	ctx, cancel := h.storeCtx(r.Context())
	defer cancel()
	o, err := h.opt.Store.Org(ctx, r.PathValue("id"))
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
		if err := validateEmail(*b.Email); err != nil {
			return err
		}
		o.Email = *b.Email
	}
	if b.EmailVerified != nil {
		o.EmailVerified = *b.EmailVerified
	}
	if b.PlanID != nil {
		if _, err := h.opt.Store.Plan(ctx, *b.PlanID); err != nil {
			if errors.Is(err, keys.ErrNotFound) {
				return &badRequestError{status: http.StatusNotFound, msg: fmt.Sprintf("plan %d does not exist", *b.PlanID)}
			}
			return fmt.Errorf("reading plan: %w", err)
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
	if err := h.madeAnyway(h.opt.Store.UpdateOrg(ctx, &o)); err != nil {
		return orgConflict(fmt.Errorf("updating org: %w", err))
	}
	h.opt.Auth.Revoke(keys.Revocation{OrgID: o.ID})
	writeJSON(w, http.StatusOK, newOrgView(o))
	return nil
}

func (h *Handler) adminCreateKey(w http.ResponseWriter, r *http.Request) error {
	var b keyBody
	if err := decodeJSON(w, r, &b); err != nil {
		return err
	}
	perms, err := keys.ParsePermissions(b.Permissions)
	if err != nil {
		return err
	}
	ctx, cancel := h.storeCtx(r.Context())
	defer cancel()
	k, secret, err := h.createKey(ctx, newKeyRequest{orgID: r.PathValue("id"), name: b.Name, permissions: perms, max: b.MaxAPIRequests, comment: b.Comment})
	if err != nil {
		return keyConflict(err, b.Name)
	}
	writeJSON(w, http.StatusCreated, newKeyView(k, secret))
	return nil
}

// orgConflict words a concurrent change of an organization for the client.
func orgConflict(err error) error {
	if errors.Is(err, keys.ErrConflict) {
		return &badRequestError{status: http.StatusConflict, msg: "the organization was changed concurrently; read it again and retry"}
	}
	return err
}

// keyConflict words a duplicate key name for the client.
func keyConflict(err error, name string) error {
	if errors.Is(err, keys.ErrConflict) {
		return &badRequestError{status: http.StatusConflict, msg: fmt.Sprintf("a key named %q already exists", name)}
	}
	return err
}

func (h *Handler) adminListKeys(w http.ResponseWriter, r *http.Request) error {
	ctx, cancel := h.storeCtx(r.Context())
	defer cancel()
	if _, err := h.opt.Store.Org(ctx, r.PathValue("id")); err != nil {
		return fmt.Errorf("reading org: %w", err)
	}
	ks, err := h.opt.Store.Keys(ctx, r.PathValue("id"))
	if err != nil {
		return fmt.Errorf("listing keys: %w", err)
	}
	out := make([]keyView, len(ks))
	for i, k := range ks {
		out[i] = newKeyView(k, "")
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (h *Handler) adminPatchKey(w http.ResponseWriter, r *http.Request) error {
	var b keyPatch
	if err := decodeJSON(w, r, &b); err != nil {
		return err
	}
	if b.MaxAPIRequests != nil && *b.MaxAPIRequests < 0 {
		return &keys.InvalidError{Field: "max_api_requests", Reason: "must be null or at least 0"}
	}
	ctx, cancel := h.storeCtx(r.Context())
	defer cancel()
	o, err := h.opt.Store.Org(ctx, r.PathValue("id"))
	if err != nil {
		return fmt.Errorf("reading org: %w", err)
	}
	limit, err := h.allocLimit(ctx, o)
	if err != nil {
		return err
	}
	k, err := h.opt.Store.UpdateKey(ctx, o.ID, r.PathValue("name"), keys.KeyPatch{MaxAPIRequests: keys.ChangeTo(b.MaxAPIRequests)}, limit)
	if err = h.madeAnyway(err); err != nil {
		return fmt.Errorf("changing key: %w", err)
	}
	h.opt.Auth.Revoke(keys.Revocation{OrgID: k.OrgID, KeyUID: k.UID})
	writeJSON(w, http.StatusOK, newKeyView(k, ""))
	return nil
}

func (h *Handler) adminDeleteKey(w http.ResponseWriter, r *http.Request) error {
	ctx, cancel := h.storeCtx(r.Context())
	defer cancel()
	if _, err := h.deleteKey(ctx, r.PathValue("id"), r.PathValue("name")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
