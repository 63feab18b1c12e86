package gw3

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/keygate/keygate/gate"
	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/listener"
	"github.com/keygate/keygate/manage"
)

// Seed 001: the partner API under /api/v0/partner/user/, in seed 000's
// {"code","msg","data"} envelope. The caller's organization must be a
// partner and its key must hold admin; every route requires the ts query
// parameter (gate.CheckTS). A partner sees only the sub-accounts it created: any
// other uuid answers 404 exactly like one that does not exist.
//
// update-plan changes the plan at once, unless the body says
// "when":"next_period": then the change is scheduled for the end of the
// current period window (Org.NextPlanID/NextPlanAt) and applied lazily by
// whoever reads the organization after that instant (the Authenticator on
// the data path, and these routes, which also write it back).

// errNoSubAccount is the one answer for a uuid the partner may not see.
var errNoSubAccount = &gate.ClientError{Status: http.StatusNotFound, Msg: "no sub-account with this uuid"}

// errNotPartner refuses a caller whose organization is not a partner.
var errNotPartner = &gate.ClientError{Status: http.StatusForbidden, Msg: "the organization of this API key is not a partner"}

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

// PartnerFunc is the step of one partner route, run after the shared ones;
// its result is the envelope's data.
type PartnerFunc func(ctx context.Context, w http.ResponseWriter, r *http.Request, p keys.Principal, q url.Values) (any, error)

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
func (a *API) partnerAuth(w *listener.Writer, r *http.Request) (keys.Principal, url.Values, error) {
	q := partnerQuery(r)
	if _, err := gate.ParseCredential(r.Header); err != nil {
		return keys.Principal{}, nil, err // no credential: 401 before anything else
	}
	if _, err := gate.CheckTS(q, a.opt.Manage.Now(), a.opt.Gate.TSSkew()); err != nil {
		return keys.Principal{}, nil, err
	}
	p, err := listener.Authenticate(a.opt.Gate, w, r)
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
func (a *API) subAccount(ctx context.Context, partner keys.Principal, uuid string) (keys.Org, error) {
	if uuid == "" {
		return keys.Org{}, &keys.InvalidError{Field: "uuid", Reason: "is required"}
	}
	if !manage.ValidOrgID(uuid) {
		return keys.Org{}, errNoSubAccount
	}
	o, err := a.opt.Manage.Store().Org(ctx, uuid)
	if errors.Is(err, keys.ErrNotFound) || err == nil && o.PartnerID != partner.Key.OrgID {
		return keys.Org{}, errNoSubAccount
	}
	if err != nil {
		return keys.Org{}, fmt.Errorf("reading sub-account: %w", err)
	}
	if due, ok := o.ApplyScheduledPlan(a.opt.Manage.Now()); ok {
		err := a.opt.Manage.UpdateOrg(ctx, &due)
		if errors.Is(err, keys.ErrConflict) {
			// Changed meanwhile (perhaps the same switch by another
			// sidecar): take the current record, the switch applied in
			// memory; the writer that won persisted its own state.
			if o, err = a.opt.Manage.Store().Org(ctx, uuid); err != nil {
				return keys.Org{}, fmt.Errorf("reading sub-account: %w", err)
			}
			due, _ = o.ApplyScheduledPlan(a.opt.Manage.Now())
		} else if err != nil {
			return keys.Org{}, err
		}
		o = due
	}
	return o, nil
}

// partnerRoute wraps the steps every partner route shares: ts, partner
// authentication, the store deadline and the envelope.
// Partner wraps a partner route's own step fn in the steps every partner
// route shares: ts, partner authentication, the store deadline and the
// envelope.
func (a *API) Partner(fn PartnerFunc) listener.HandlerFunc {
	return func(w *listener.Writer, r *http.Request) {
		p, q, err := a.partnerAuth(w, r)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		ctx, cancel := a.opt.Manage.Context(r.Context())
		defer cancel()
		data, err := fn(ctx, w, r, p, q)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		ok(w, "ok", data)
	}
}

// PartnerCreate is the partner route of that name; wrap it in Partner.
func (a *API) PartnerCreate(ctx context.Context, w http.ResponseWriter, r *http.Request, p keys.Principal, _ url.Values) (any, error) {
	var b partnerCreateBody
	if err := gate.DecodeJSON(w, r, &b); err != nil {
		return nil, err
	}
	if b.UUID == "" {
		return nil, &keys.InvalidError{Field: "uuid", Reason: "is required"}
	}
	if !manage.ValidOrgID(b.UUID) {
		return nil, &keys.InvalidError{Field: "uuid", Reason: "want 1 to 64 letters, digits, '.', '_' or '-' (a UUID fits)"}
	}
	planID := p.Org.PlanID
	if b.PlanID != nil {
		planID = *b.PlanID
	}
	_, err := a.opt.Manage.CreateOrg(ctx, manage.NewOrg{ID: b.UUID, Name: b.Name, Email: b.Email, PlanID: &planID}, p.Key.OrgID)
	if err != nil {
		if errors.Is(err, manage.ErrOrgExists) {
			return nil, &gate.ClientError{Status: http.StatusConflict, Msg: "an account with this uuid already exists"}
		}
		return nil, err
	}
	return nil, nil
}

// PartnerStats is the partner route of that name; wrap it in Partner.
func (a *API) PartnerStats(ctx context.Context, _ http.ResponseWriter, _ *http.Request, p keys.Principal, q url.Values) (any, error) {
	o, err := a.subAccount(ctx, p, q.Get("uuid"))
	if err != nil {
		return nil, err
	}
	pl, err := a.opt.Manage.Store().Plan(ctx, o.PlanID)
	if err != nil && !errors.Is(err, keys.ErrNotFound) {
		return nil, fmt.Errorf("reading plan: %w", err)
	}
	next := pl
	if o.NextPlanID != nil {
		if next, err = a.opt.Manage.Store().Plan(ctx, *o.NextPlanID); err != nil && !errors.Is(err, keys.ErrNotFound) {
			return nil, fmt.Errorf("reading next plan: %w", err)
		}
	}
	// next_bill_at: when the current period window ends (null for a plan
	// that never resets).
	var billAt *int64
	if end := gate.PlanPeriod(pl).Window(a.opt.Manage.Now()).End; !end.IsZero() {
		s := end.Unix()
		billAt = &s
	}
	return a.orgStats(ctx, o, pl, field{"next_plan", next.Name}, field{"next_bill_at", billAt})
}

// PartnerUpdatePlan is the partner route of that name; wrap it in Partner.
func (a *API) PartnerUpdatePlan(ctx context.Context, w http.ResponseWriter, r *http.Request, p keys.Principal, _ url.Values) (any, error) {
	var b partnerPlanBody
	if err := gate.DecodeJSON(w, r, &b); err != nil {
		return nil, err
	}
	if b.PlanID == nil {
		return nil, &keys.InvalidError{Field: "plan_id", Reason: "is required"}
	}
	if b.When != "" && b.When != "now" && b.When != "next_period" {
		return nil, &keys.InvalidError{Field: "when", Reason: `want "now" or "next_period"`}
	}
	o, err := a.subAccount(ctx, p, b.UUID)
	if err != nil {
		return nil, err
	}
	if _, err := a.opt.Manage.ExistingPlan(ctx, *b.PlanID); err != nil {
		return nil, err
	}
	if b.When == "next_period" {
		cur, err := a.opt.Manage.Store().Plan(ctx, o.PlanID)
		if err != nil && !errors.Is(err, keys.ErrNotFound) {
			return nil, fmt.Errorf("reading plan: %w", err)
		}
		end := gate.PlanPeriod(cur).Window(a.opt.Manage.Now()).End
		if end.IsZero() {
			return nil, &keys.InvalidError{Field: "when", Reason: "the current plan never resets (period none): there is no next period; change it now"}
		}
		o.NextPlanID, o.NextPlanAt = b.PlanID, end
	} else {
		o.PlanID, o.NextPlanID, o.NextPlanAt = *b.PlanID, nil, time.Time{}
	}
	return nil, manage.OrgConflict(a.opt.Manage.UpdateOrg(ctx, &o))
}

// PartnerCreateKey is the partner route of that name; wrap it in Partner.
func (a *API) PartnerCreateKey(ctx context.Context, w http.ResponseWriter, r *http.Request, p keys.Principal, _ url.Values) (any, error) {
	var b partnerKeyBody
	if err := gate.DecodeJSON(w, r, &b); err != nil {
		return nil, err
	}
	o, err := a.subAccount(ctx, p, b.UUID)
	if err != nil {
		return nil, err
	}
	return a.createNamedKey(ctx, o.ID, v0KeyBody{Name: b.Name, Permissions: b.Permissions})
}

// PartnerKeys is the partner route of that name; wrap it in Partner.
func (a *API) PartnerKeys(ctx context.Context, _ http.ResponseWriter, _ *http.Request, p keys.Principal, q url.Values) (any, error) {
	o, err := a.subAccount(ctx, p, q.Get("uuid"))
	if err != nil {
		return nil, err
	}
	ks, err := a.opt.Manage.Store().Keys(ctx, o.ID)
	if err != nil {
		return nil, fmt.Errorf("listing keys: %w", err)
	}
	return v0Keys(ks), nil
}

// PartnerDeleteKey is the partner route of that name; wrap it in Partner.
func (a *API) PartnerDeleteKey(ctx context.Context, w http.ResponseWriter, r *http.Request, p keys.Principal, _ url.Values) (any, error) {
	var b partnerDeleteBody
	if err := gate.DecodeJSON(w, r, &b); err != nil {
		return nil, err
	}
	o, err := a.subAccount(ctx, p, b.UUID)
	if err != nil {
		return nil, err
	}
	return nil, a.deleteNamedKey(ctx, o.ID, b.Name)
}
