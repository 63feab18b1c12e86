package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/keygate/keygate/keys"
)

// Seed 001: the partner API under /api/v0/partner/user/, in seed 000's
// {"code","msg","data"} envelope. The caller's organization must be a
// partner and its key must hold admin; every route requires the ts query
// parameter (checkTS). A partner sees only the sub-accounts it created: any
// other uuid answers 404 exactly like one that does not exist.
//
// update-plan changes the plan at once, unless the body says
// "when":"next_period": then the change is scheduled for the end of the
// current period window (Org.NextPlanID/NextPlanAt) and applied lazily by
// whoever reads the organization after that instant (the Authenticator on
// the data path, and these routes, which also write it back).

const partnerPrefix = "/api/v0/partner/user/"

// errNoSubAccount is the one answer for a uuid the partner may not see.
var errNoSubAccount = &badRequestError{status: http.StatusNotFound, msg: "no sub-account with this uuid"}

// errNotPartner refuses a caller whose organization is not a partner.
var errNotPartner = &badRequestError{status: http.StatusForbidden, msg: "the organization of this API key is not a partner"}

type partnerCreateBody struct {
	UUID  string `json:"uuid"`
	Email string `json:"email"`
	Name  string `json:"name"`
	// PlanID picks the sub-account's plan; absent = the partner's own plan.
	PlanID *int64 `json:"plan_id"`
}

type partnerPlanBody struct {
	UUID   string `json:"uuid"`
	PlanID *int64 `json:"plan_id"`
	// When is "now" (the default) or "next_period".
	When string `json:"when"`
}

type partnerKeyBody struct {
	UUID        string   `json:"uuid"`
	Name        string   `json:"name"`
	Permissions []string `json:"permissions"`
}

type partnerDeleteBody struct {
	UUID string `json:"uuid"`
	Name string `json:"name"`
}

// partnerQuery returns the request's query. The seed's keys example sends
// "…?uuid=jack_001&?ts=1688644825", whose second parameter is named "?ts";
// it is read as ts when ts itself is absent, so that client works unchanged.
func partnerQuery(r *http.Request) url.Values {
	q := r.URL.Query()
	if _, ok := q["ts"]; !ok {
		if v, ok := q["?ts"]; ok {
			q["ts"] = v
		}
	}
	return q
}

// partnerAuth checks ts, then authenticates a partner's admin key.
func (h *Handler) partnerAuth(r *http.Request, rec *accessRecord) (keys.Principal, url.Values, error) {
	q := partnerQuery(r)
	if _, err := credentialFrom(r.Header); err != nil {
		return keys.Principal{}, nil, err // no credential: 401 before anything else
	}
	if _, err := checkTS(q, h.opt.Now(), h.opt.TSSkew); err != nil {
		return keys.Principal{}, nil, err
	}
	p, err := h.selfAuth(r, rec)
	if err != nil {
		return keys.Principal{}, nil, err
	}
	if !p.Org.Partner {
		return keys.Principal{}, nil, errNotPartner
	}
	if !p.Can(keys.PermAdmin) {
		return keys.Principal{}, nil, &keys.PermissionError{Need: keys.PermAdmin}
	}
	return p, q, nil
}

// subAccount reads a sub-account of partner, applying (and writing back) a
// scheduled plan change that is due. Anything the partner may not see is
// errNoSubAccount.
func (h *Handler) subAccount(ctx context.Context, partner keys.Principal, uuid string) (keys.Org, error) {
	if uuid == "" {
		return keys.Org{}, &keys.InvalidError{Field: "uuid", Reason: "is required"}
	}
	if !orgIDPattern.MatchString(uuid) {
		return keys.Org{}, errNoSubAccount
	}
	o, err := h.opt.Store.Org(ctx, uuid)
	if errors.Is(err, keys.ErrNotFound) || err == nil && o.PartnerID != partner.Key.OrgID {
		return keys.Org{}, errNoSubAccount
	}
	if err != nil {
		return keys.Org{}, fmt.Errorf("reading sub-account: %w", err)
	}
	if due, ok := o.ApplyScheduledPlan(h.opt.Now()); ok {
		err := h.updateOrg(ctx, &due)
		if errors.Is(err, keys.ErrConflict) {
			// Changed meanwhile (perhaps the same switch by another
			// sidecar): take the current record, the switch applied in
			// memory; the writer that won persisted its own state.
			if o, err = h.opt.Store.Org(ctx, uuid); err != nil {
				return keys.Org{}, fmt.Errorf("reading sub-account: %w", err)
			}
			due, _ = o.ApplyScheduledPlan(h.opt.Now())
		} else if err != nil {
			return keys.Org{}, err
		}
		o = due
	}
	return o, nil
}

// updateOrg writes an organization and forgets its cached principals here
// at once; the store tells the other sidecars.
func (h *Handler) updateOrg(ctx context.Context, o *keys.Org) error {
	if err := h.madeAnyway(h.opt.Store.UpdateOrg(ctx, o)); err != nil {
		return fmt.Errorf("updating org: %w", err)
	}
	h.opt.Auth.Revoke(keys.Revocation{OrgID: o.ID})
	return nil
}

// existingPlan reads a plan a request names; an unknown one is a 404 that
// says so.
func (h *Handler) existingPlan(ctx context.Context, id int64) (keys.Plan, error) {
	pl, err := h.opt.Store.Plan(ctx, id)
	if errors.Is(err, keys.ErrNotFound) {
		return keys.Plan{}, &badRequestError{status: http.StatusNotFound, msg: fmt.Sprintf("plan %d does not exist", id)}
	}
	if err != nil {
		return keys.Plan{}, fmt.Errorf("reading plan: %w", err)
	}
	return pl, nil
}

// partnerRoute wraps the steps every partner route shares: ts, partner
// authentication, the store deadline and the envelope.
func (h *Handler) partnerRoute(fn func(ctx context.Context, w http.ResponseWriter, r *http.Request, p keys.Principal, q url.Values) (any, error)) selfHandler {
	return func(w http.ResponseWriter, r *http.Request, rec *accessRecord) {
		p, q, err := h.partnerAuth(r, rec)
		if err != nil {
			h.v0Fail(w, r, rec, err)
			return
		}
		ctx, cancel := h.storeCtx(r.Context())
		defer cancel()
		data, err := fn(ctx, w, r, p, q)
		if err != nil {
			h.v0Fail(w, r, rec, err)
			return
		}
		v0OK(w, rec, "ok", data)
	}
}

func (h *Handler) partnerCreate(ctx context.Context, w http.ResponseWriter, r *http.Request, p keys.Principal, _ url.Values) (any, error) {
	var b partnerCreateBody
	if err := decodeJSON(w, r, &b); err != nil {
		return nil, err
	}
	if b.UUID == "" {
		return nil, &keys.InvalidError{Field: "uuid", Reason: "is required"}
	}
	if !orgIDPattern.MatchString(b.UUID) {
		return nil, &keys.InvalidError{Field: "uuid", Reason: "want 1 to 64 letters, digits, '.', '_' or '-' (a UUID fits)"}
	}
	planID := p.Org.PlanID
	if b.PlanID != nil {
		planID = *b.PlanID
	}
	_, err := h.newOrg(ctx, orgBody{ID: b.UUID, Name: b.Name, Email: b.Email, PlanID: &planID}, p.Key.OrgID)
	if err != nil {
		if errors.Is(err, errOrgExists) {
			return nil, &badRequestError{status: http.StatusConflict, msg: "an account with this uuid already exists"}
		}
		return nil, err
	}
	return nil, nil
}

func (h *Handler) partnerStats(ctx context.Context, _ http.ResponseWriter, _ *http.Request, p keys.Principal, q url.Values) (any, error) {
	o, err := h.subAccount(ctx, p, q.Get("uuid"))
	if err != nil {
		return nil, err
	}
	pl, err := h.opt.Store.Plan(ctx, o.PlanID)
	if err != nil && !errors.Is(err, keys.ErrNotFound) {
		return nil, fmt.Errorf("reading plan: %w", err)
	}
	next := pl
	if o.NextPlanID != nil {
		if next, err = h.opt.Store.Plan(ctx, *o.NextPlanID); err != nil && !errors.Is(err, keys.ErrNotFound) {
			return nil, fmt.Errorf("reading next plan: %w", err)
		}
	}
	// next_bill_at: when the current period window ends (null for a plan
	// that never resets).
	var billAt *int64
	if end := planPeriod(pl).Window(h.opt.Now()).End; !end.IsZero() {
		s := end.Unix()
		billAt = &s
	}
	return h.orgStats(ctx, o, pl, field{"next_plan", next.Name}, field{"next_bill_at", billAt})
}

func (h *Handler) partnerUpdatePlan(ctx context.Context, w http.ResponseWriter, r *http.Request, p keys.Principal, _ url.Values) (any, error) {
	var b partnerPlanBody
	if err := decodeJSON(w, r, &b); err != nil {
		return nil, err
	}
	if b.PlanID == nil {
		return nil, &keys.InvalidError{Field: "plan_id", Reason: "is required"}
	}
	if b.When != "" && b.When != "now" && b.When != "next_period" {
		return nil, &keys.InvalidError{Field: "when", Reason: `want "now" or "next_period"`}
	}
	o, err := h.subAccount(ctx, p, b.UUID)
	if err != nil {
		return nil, err
	}
	if _, err := h.existingPlan(ctx, *b.PlanID); err != nil {
		return nil, err
	}
	if b.When == "next_period" {
		cur, err := h.opt.Store.Plan(ctx, o.PlanID)
		if err != nil && !errors.Is(err, keys.ErrNotFound) {
			return nil, fmt.Errorf("reading plan: %w", err)
		}
		end := planPeriod(cur).Window(h.opt.Now()).End
		if end.IsZero() {
			return nil, &keys.InvalidError{Field: "when", Reason: "the current plan never resets (period none): there is no next period; change it now"}
		}
		o.NextPlanID, o.NextPlanAt = b.PlanID, end
	} else {
		o.PlanID, o.NextPlanID, o.NextPlanAt = *b.PlanID, nil, time.Time{}
	}
	return nil, orgConflict(h.updateOrg(ctx, &o))
}

func (h *Handler) partnerCreateKey(ctx context.Context, w http.ResponseWriter, r *http.Request, p keys.Principal, _ url.Values) (any, error) {
	var b partnerKeyBody
	if err := decodeJSON(w, r, &b); err != nil {
		return nil, err
	}
	o, err := h.subAccount(ctx, p, b.UUID)
	if err != nil {
		return nil, err
	}
	return h.createNamedKey(ctx, o.ID, v0KeyBody{Name: b.Name, Permissions: b.Permissions})
}

func (h *Handler) partnerKeys(ctx context.Context, _ http.ResponseWriter, _ *http.Request, p keys.Principal, q url.Values) (any, error) {
	o, err := h.subAccount(ctx, p, q.Get("uuid"))
	if err != nil {
		return nil, err
	}
	ks, err := h.opt.Store.Keys(ctx, o.ID)
	if err != nil {
		return nil, fmt.Errorf("listing keys: %w", err)
	}
	return v0Keys(ks), nil
}

func (h *Handler) partnerDeleteKey(ctx context.Context, w http.ResponseWriter, r *http.Request, p keys.Principal, _ url.Values) (any, error) {
	var b partnerDeleteBody
	if err := decodeJSON(w, r, &b); err != nil {
		return nil, err
	}
	o, err := h.subAccount(ctx, p, b.UUID)
	if err != nil {
		return nil, err
	}
	return nil, h.deleteNamedKey(ctx, o.ID, b.Name)
}
