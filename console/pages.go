package console

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/keygate/keygate/gate"
	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/manage"
	"github.com/keygate/keygate/meter"
	"github.com/keygate/keygate/quota"
)

// orgPageSize is how many organizations a list page shows.
const orgPageSize = 50

// view is what every page template gets.
type view struct {
	Title string
	// Nav marks the current section: "orgs" or "plans".
	Nav    string
	CSRF   string
	Notice string
	Error  string
	// Flash holds a new key's secret, shown once.
	Flash *flash
	Data  any
}

// ctx bounds the store calls of one page.
func (c *Console) ctx(r *http.Request) (context.Context, context.CancelFunc) {
	return c.opt.Manage.Context(r.Context())
}

// redirectWith sends the browser to path with a one-time notice.
func (c *Console) redirectWith(w http.ResponseWriter, r *http.Request, s *session, path string, f flash) {
	c.sessions.setFlash(s, f)
	http.Redirect(w, r, path, http.StatusSeeOther)
}

// newView starts a page's view, taking the session's one-time message.
func (c *Console) newView(s *session, title, nav string) view {
	v := view{Title: title, Nav: nav, CSRF: s.csrf}
	if f := c.sessions.takeFlash(s); f != nil {
		v.Notice = f.Notice
		if f.Secret != "" {
			v.Flash = f
		}
	}
	return v
}

// problem turns err into the status and message a page shows; ok is false
// for internal failures, which the caller returns instead.
func problem(err error) (status int, msg string, ok bool) {
	var ae *apiError
	var fe *formError
	var inv *keys.InvalidError
	switch {
	case errors.As(err, &ae):
		return ae.Status, ae.Message, true
	case errors.As(err, &fe):
		return http.StatusBadRequest, fe.Error(), true
	case errors.As(err, &inv):
		return http.StatusBadRequest, inv.Error(), true
	}
	if p := gate.Classify(err, time.Now()); !p.Internal {
		return p.Status, p.Message, true
	}
	return 0, "", false
}

// ----- plans -----

func (c *Console) plansPage(w http.ResponseWriter, r *http.Request, s *session) error {
	ctx, cancel := c.ctx(r)
	defer cancel()
	pls, err := c.opt.Manage.Store().Plans(ctx)
	if err != nil {
		return fmt.Errorf("listing plans: %w", err)
	}
	v := c.newView(s, "Plans", "plans")
	v.Data = pls
	c.render(w, http.StatusOK, "plans", v)
	return nil
}

// planForm is the plan form's fields as typed, so a refused form comes back
// as the operator left it.
type planForm struct {
	New                                  bool
	ID, Name, Price, Period, Max, Limits string
	KeyRequests, KeyPer, KeyBurst        string
	OrgRequests, OrgPer, OrgBurst        string
	KeyShadow, OrgShadow                 bool
}

func planFormOf(pl keys.Plan) planForm {
	f := planForm{ID: strconv.FormatInt(pl.ID, 10), Name: pl.Name, Price: pl.Price, Period: pl.Period, Max: optInt(pl.MaxAPIRequests)}
	names := make([]string, 0, len(pl.Limits))
	for n := range pl.Limits {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		f.Limits += fmt.Sprintf("%s=%d\n", n, pl.Limits[n])
	}
	f.KeyRequests, f.KeyPer, f.KeyBurst, f.KeyShadow = rateLimitFields(pl.KeyRateLimit)
	f.OrgRequests, f.OrgPer, f.OrgBurst, f.OrgShadow = rateLimitFields(pl.OrgRateLimit)
	return f
}

// rateLimitFields are a rate limit's form fields, the ones rateLimitBody
// reads back: all empty for no limit, per as the API writes it ("1m"), an
// empty burst for the default.
func rateLimitFields(l *keys.RateLimit) (requests, per, burst string, shadow bool) {
	if l == nil {
		return "", "", "", false
	}
	if l.Burst != 0 {
		burst = strconv.FormatInt(l.Burst, 10)
	}
	return strconv.FormatInt(l.Requests, 10), keys.FormatRatePer(l.Per), burst, l.Shadow
}

func readPlanForm(r *http.Request) planForm {
	g := r.PostForm.Get
	return planForm{ID: g("id"), Name: g("name"), Price: g("price"), Period: g("period"), Max: g("max_api_requests"), Limits: g("limits"),
		KeyRequests: g("key_requests"), KeyPer: g("key_per"), KeyBurst: g("key_burst"), KeyShadow: g("key_shadow") != "",
		OrgRequests: g("org_requests"), OrgPer: g("org_per"), OrgBurst: g("org_burst"), OrgShadow: g("org_shadow") != ""}
}

// body is the operator API body of the form: every field the form shows,
// empty ones as null.
func (f planForm) body() (map[string]any, error) {
	max, err := parseOptInt("max_api_requests", f.Max)
	if err != nil {
		return nil, err
	}
	limits, err := parseLimits(f.Limits)
	if err != nil {
		return nil, err
	}
	keyRL, err := rateLimitBody("key_rate_limit", f.KeyRequests, f.KeyPer, f.KeyBurst, f.KeyShadow)
	if err != nil {
		return nil, err
	}
	orgRL, err := rateLimitBody("org_rate_limit", f.OrgRequests, f.OrgPer, f.OrgBurst, f.OrgShadow)
	if err != nil {
		return nil, err
	}
	b := map[string]any{"name": f.Name, "price": f.Price, "max_api_requests": max, "limits": limits,
		"key_rate_limit": keyRL, "org_rate_limit": orgRL}
	if f.New {
		id, err := strconv.ParseInt(strings.TrimSpace(f.ID), 10, 64)
		if err != nil {
			return nil, &formError{"id", "want a whole number"}
		}
		b["id"], b["period"] = id, strings.TrimSpace(f.Period)
	}
	return b, nil
}

func (c *Console) newPlanPage(w http.ResponseWriter, r *http.Request, s *session) error {
	v := c.newView(s, "New plan", "plans")
	v.Data = planForm{New: true, Period: "month"}
	c.render(w, http.StatusOK, "planform", v)
	return nil
}

func (c *Console) createPlan(w http.ResponseWriter, r *http.Request, s *session) error {
	f := readPlanForm(r)
	f.New = true
	b, err := f.body()
	if err == nil {
		err = c.call(r, http.MethodPost, "/admin/v1/plans", b, nil)
	}
	if err != nil {
		return c.refuse(w, s, err, "New plan", "plans", "planform", f)
	}
	c.redirectWith(w, r, s, "/console/plans", flash{Notice: fmt.Sprintf("Plan %s created.", f.ID)})
	return nil
}

// refuse shows a form again with the reason it was refused, with the status
// of the refusal; internal failures go to the error page.
func (c *Console) refuse(w http.ResponseWriter, s *session, err error, title, nav, page string, data any) error {
	status, msg, ok := problem(err)
	if !ok {
		return err
	}
	v := view{Title: title, Nav: nav, CSRF: s.csrf, Error: msg, Data: data}
	c.render(w, status, page, v)
	return nil
}

func planID(r *http.Request) (int64, error) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		return 0, &apiError{Status: http.StatusNotFound, Message: "no plan with this id"}
	}
	return id, nil
}

func (c *Console) planPage(w http.ResponseWriter, r *http.Request, s *session) error {
	id, err := planID(r)
	if err != nil {
		return err
	}
	ctx, cancel := c.ctx(r)
	defer cancel()
	pl, err := c.opt.Manage.ExistingPlan(ctx, id)
	if err != nil {
		return err
	}
	v := c.newView(s, "Plan "+pl.Name, "plans")
	v.Data = planFormOf(pl)
	c.render(w, http.StatusOK, "planform", v)
	return nil
}

func (c *Console) patchPlan(w http.ResponseWriter, r *http.Request, s *session) error {
	id, err := planID(r)
	if err != nil {
		return err
	}
	f := readPlanForm(r)
	f.ID = strconv.FormatInt(id, 10)
	ctx, cancel := c.ctx(r)
	defer cancel()
	pl, err := c.opt.Manage.ExistingPlan(ctx, id)
	if err != nil {
		return err
	}
	f.Period = pl.Period
	b, err := f.body()
	if err == nil {
		err = c.call(r, http.MethodPatch, "/admin/v1/plans/"+f.ID, b, nil)
	}
	if err != nil {
		return c.refuse(w, s, err, "Plan "+pl.Name, "plans", "planform", f)
	}
	c.redirectWith(w, r, s, "/console/plans", flash{Notice: fmt.Sprintf("Plan %d saved.", id)})
	return nil
}

// ----- organizations -----

// orgsData is the organization list page.
type orgsData struct {
	Search string
	Orgs   []keys.Org
	Plans  map[int64]string
	Next   string
	Paged  bool
}

func (c *Console) orgsPage(w http.ResponseWriter, r *http.Request, s *session) error {
	q := r.URL.Query()
	ctx, cancel := c.ctx(r)
	defer cancel()
	v := c.newView(s, "Organizations", "orgs")
	d := orgsData{Search: q.Get("q"), Paged: q.Get("after") != ""}
	v.Data = &d
	page, err := c.opt.Manage.Store().FindOrgs(ctx, keys.OrgQuery{Search: d.Search, After: q.Get("after"), Limit: orgPageSize})
	if err != nil {
		status, msg, ok := problem(err)
		if !ok {
			return fmt.Errorf("listing organizations: %w", err)
		}
		v.Error = msg
		c.render(w, status, "orgs", v)
		return nil
	}
	plans, err := c.planNames(ctx)
	if err != nil {
		return err
	}
	now := c.opt.Manage.Now()
	for i, o := range page.Orgs {
		page.Orgs[i], _ = o.ApplyScheduledPlan(now)
	}
	d.Orgs, d.Plans, d.Next = page.Orgs, plans, page.Next
	c.render(w, http.StatusOK, "orgs", v)
	return nil
}

func (c *Console) planNames(ctx context.Context) (map[int64]string, error) {
	pls, err := c.opt.Manage.Store().Plans(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing plans: %w", err)
	}
	out := make(map[int64]string, len(pls))
	for _, p := range pls {
		out[p.ID] = p.Name
	}
	return out, nil
}

// orgForm is the new-organization form as typed.
type orgForm struct {
	ID, Name, Email, PlanID, Max, Username string
	Partner, Unlimited                     bool
	Plans                                  []keys.Plan
}

func (c *Console) newOrgPage(w http.ResponseWriter, r *http.Request, s *session) error {
	ctx, cancel := c.ctx(r)
	defer cancel()
	pls, err := c.opt.Manage.Store().Plans(ctx)
	if err != nil {
		return fmt.Errorf("listing plans: %w", err)
	}
	v := c.newView(s, "New organization", "orgs")
	v.Data = orgForm{Plans: pls}
	c.render(w, http.StatusOK, "orgform", v)
	return nil
}

func (c *Console) createOrg(w http.ResponseWriter, r *http.Request, s *session) error {
	g := r.PostForm.Get
	f := orgForm{ID: strings.TrimSpace(g("id")), Name: g("name"), Email: strings.TrimSpace(g("email")), PlanID: g("plan_id"), Max: g("max_api_requests"),
		Username: g("username"), Partner: g("partner") != "", Unlimited: g("unlimited") != ""}
	err := func() error {
		plan, err := strconv.ParseInt(f.PlanID, 10, 64)
		if err != nil {
			return &formError{"plan_id", "choose a plan"}
		}
		max, err := parseOptInt("max_api_requests", f.Max)
		if err != nil {
			return err
		}
		var out struct {
			ID string `json:"id"`
		}
		if err := c.call(r, http.MethodPost, "/admin/v1/orgs", manage.NewOrg{ID: f.ID, Name: f.Name, Email: f.Email, PlanID: &plan,
			Partner: f.Partner, Unlimited: f.Unlimited, MaxAPIRequests: max, Username: f.Username, Password: g("password")}, &out); err != nil {
			return err
		}
		f.ID = out.ID
		return nil
	}()
	if err != nil {
		ctx, cancel := c.ctx(r)
		defer cancel()
		f.Plans, _ = c.opt.Manage.Store().Plans(ctx)
		return c.refuse(w, s, err, "New organization", "orgs", "orgform", f)
	}
	c.redirectWith(w, r, s, "/console/orgs/"+url.PathEscape(f.ID), flash{Notice: "Organization created."})
	return nil
}

// bar is one usage bar: a meter's use against its limit in the current
// window.
type bar struct {
	Name  string
	Used  int64
	Limit *int64
	// Resets is when the window ends; zero for running totals.
	Resets time.Time
}

// Percent is the bar's fill, 0 to 100.
func (b bar) Percent() int64 {
	if b.Limit == nil || *b.Limit <= 0 {
		if b.Limit != nil && b.Used > 0 {
			return 100
		}
		return 0
	}
	return min(b.Used*100 / *b.Limit, 100)
}

// Max is the meter element's maximum: the limit, at least 1 (a limit of
// 0 shows any use as full).
func (b bar) Max() int64 {
	if b.Limit == nil || *b.Limit < 1 {
		return 1
	}
	return *b.Limit
}

// Low and High are where the bar turns amber and red: 80% and 95%.
func (b bar) Low() int64  { return b.Max() * 8 / 10 }
func (b bar) High() int64 { return b.Max() * 95 / 100 }

// orgData is one organization's page.
type orgData struct {
	Org      keys.Org
	Plan     keys.Plan
	NextPlan *keys.Plan
	Quota    manage.Quota
	Bars     []bar
	Keys     []keys.Key
	Subs     []keys.Org
	Plans    []keys.Plan
	KeyForm  keyForm
	Perms    []keys.Permission
	Now      time.Time
}

// keyForm is the new-key form as typed.
type keyForm struct {
	Name, Max, Comment string
	Perms              []string
}

// Has reports whether the form has permission p ticked.
func (f keyForm) Has(p keys.Permission) bool { return slices.Contains(f.Perms, string(p)) }

func (c *Console) orgPage(w http.ResponseWriter, r *http.Request, s *session) error {
	return c.showOrg(w, r, s, http.StatusOK, "", keyForm{Perms: []string{"read", "write"}})
}

// showOrg renders an organization's page with status and, when not empty,
// the message of a refused action.
func (c *Console) showOrg(w http.ResponseWriter, r *http.Request, s *session, status int, msg string, kf keyForm) error {
	ctx, cancel := c.ctx(r)
	defer cancel()
	st := c.opt.Manage.Store()
	o, err := st.Org(ctx, r.PathValue("id"))
	if err != nil {
		return fmt.Errorf("reading org: %w", err)
	}
	now := c.opt.Manage.Now()
	o, _ = o.ApplyScheduledPlan(now)
	d := orgData{Org: o, KeyForm: kf, Perms: keys.AllPermissions, Now: now}
	if d.Plans, err = st.Plans(ctx); err != nil {
		return fmt.Errorf("listing plans: %w", err)
	}
	for _, p := range d.Plans {
		if p.ID == o.PlanID {
			d.Plan = p
		}
		if o.NextPlanID != nil && p.ID == *o.NextPlanID {
			d.NextPlan = &p
		}
	}
	if d.Quota, err = c.opt.Manage.OrgUsage(ctx, o); err != nil {
		return err
	}
	if d.Bars, err = c.bars(ctx, o, d.Plan, d.Quota, now); err != nil {
		return err
	}
	if d.Keys, err = st.Keys(ctx, o.ID); err != nil {
		return fmt.Errorf("listing keys: %w", err)
	}
	if o.Partner {
		if d.Subs, err = st.SubOrgs(ctx, o.ID); err != nil {
			return fmt.Errorf("listing sub-accounts: %w", err)
		}
	}
	v := c.newView(s, o.Name, "orgs")
	if msg != "" {
		v.Error = msg
	}
	v.Data = d
	c.render(w, status, "org", v)
	return nil
}

// bars reads the organization's usage: requests, then every meter its plan
// limits, by name.
func (c *Console) bars(ctx context.Context, o keys.Org, pl keys.Plan, q manage.Quota, now time.Time) ([]bar, error) {
	period := gate.PlanPeriod(pl)
	out := []bar{{Name: meter.Requests, Used: q.CurrentUsage, Limit: q.MaxAPIRequests, Resets: period.Window(now).End}}
	names := make([]string, 0, len(pl.Limits))
	for n := range pl.Limits {
		names = append(names, n)
	}
	slices.Sort(names)
	if len(names) == 0 {
		return out, nil
	}
	ms := make([]quota.Meter, len(names))
	for i, n := range names {
		ms[i] = meter.ForName(n, period)
	}
	used, err := c.opt.Manage.Counter().Meters(ctx, o.ID, now, ms)
	if err != nil {
		return nil, fmt.Errorf("reading meters: %w", err)
	}
	if len(used) != len(ms) {
		return nil, fmt.Errorf("reading meters: %d values for %d meters", len(used), len(ms))
	}
	for i, m := range ms {
		limit := pl.Limits[m.Name]
		out = append(out, bar{Name: m.Name, Used: used[i], Limit: &limit, Resets: m.Period.Window(now).End})
	}
	return out, nil
}

// orgPath is the console page of the request's organization.
func orgPath(r *http.Request) string { return "/console/orgs/" + url.PathEscape(r.PathValue("id")) }

// apiKeyPath is the operator API path of the request's key.
func apiKeyPath(r *http.Request) string {
	return "/admin/v1/orgs/" + url.PathEscape(r.PathValue("id")) + "/keys/" + url.PathEscape(r.PathValue("name"))
}

func (c *Console) changeOrgPlan(w http.ResponseWriter, r *http.Request, s *session) error {
	err := func() error {
		plan, err := strconv.ParseInt(r.PostForm.Get("plan_id"), 10, 64)
		if err != nil {
			return &formError{"plan_id", "choose a plan"}
		}
		return c.call(r, http.MethodPatch, "/admin/v1/orgs/"+url.PathEscape(r.PathValue("id")), map[string]any{"plan_id": plan}, nil)
	}()
	if err != nil {
		return c.refuseOrg(w, r, s, err, keyForm{})
	}
	c.redirectWith(w, r, s, orgPath(r), flash{Notice: "Plan changed."})
	return nil
}

// refuseOrg shows the organization's page again with the reason an action
// on it was refused.
func (c *Console) refuseOrg(w http.ResponseWriter, r *http.Request, s *session, err error, kf keyForm) error {
	status, msg, ok := problem(err)
	if !ok {
		return err
	}
	if status == http.StatusNotFound && r.PathValue("name") == "" {
		return err // the organization itself is gone
	}
	return c.showOrg(w, r, s, status, msg, kf)
}

func (c *Console) createKey(w http.ResponseWriter, r *http.Request, s *session) error {
	f := keyForm{Name: r.PostForm.Get("name"), Max: r.PostForm.Get("max_api_requests"), Comment: r.PostForm.Get("comment"), Perms: r.PostForm["permissions"]}
	if len(f.Perms) > len(keys.AllPermissions) {
		f.Perms = f.Perms[:len(keys.AllPermissions)+1] // the API refuses it; keep it small
	}
	var out struct {
		Name         string `json:"name"`
		AccessKey    string `json:"access_key"`
		AccessSecret string `json:"access_secret"`
	}
	err := func() error {
		max, err := parseOptInt("max_api_requests", f.Max)
		if err != nil {
			return err
		}
		perms := f.Perms
		if perms == nil {
			perms = []string{}
		}
		return c.call(r, http.MethodPost, "/admin/v1/orgs/"+url.PathEscape(r.PathValue("id"))+"/keys",
			map[string]any{"name": f.Name, "permissions": perms, "max_api_requests": max, "comment": f.Comment}, &out)
	}()
	if err != nil {
		return c.refuseOrg(w, r, s, err, f)
	}
	c.redirectWith(w, r, s, orgPath(r), flash{Notice: fmt.Sprintf("Key %q created.", out.Name), OrgID: r.PathValue("id"),
		KeyName: out.Name, AccessKey: out.AccessKey, Secret: out.AccessSecret})
	return nil
}

// keyData is one key's page.
type keyData struct {
	Org                             keys.Org
	Key                             keys.Key
	Max, RLRequests, RLPer, RLBurst string
	RLShadow                        bool
}

func (c *Console) keyPage(w http.ResponseWriter, r *http.Request, s *session) error {
	return c.showKey(w, r, s, http.StatusOK, "", nil)
}

func (c *Console) showKey(w http.ResponseWriter, r *http.Request, s *session, status int, msg string, typed *keyData) error {
	ctx, cancel := c.ctx(r)
	defer cancel()
	o, err := c.opt.Manage.Store().Org(ctx, r.PathValue("id"))
	if err != nil {
		return fmt.Errorf("reading org: %w", err)
	}
	k, err := c.opt.Manage.Store().KeyByName(ctx, o.ID, r.PathValue("name"))
	if err != nil {
		return fmt.Errorf("reading key: %w", err)
	}
	d := keyData{Org: o, Key: k, Max: optInt(k.MaxAPIRequests)}
	d.RLRequests, d.RLPer, d.RLBurst, d.RLShadow = rateLimitFields(k.RateLimit)
	if typed != nil {
		d.Max, d.RLRequests, d.RLPer, d.RLBurst, d.RLShadow = typed.Max, typed.RLRequests, typed.RLPer, typed.RLBurst, typed.RLShadow
	}
	v := c.newView(s, "Key "+k.Name, "orgs")
	v.Error = msg
	v.Data = d
	c.render(w, status, "key", v)
	return nil
}

// back is where an action on a key returns: the key's page when it was
// sent from there, else the organization's.
func back(r *http.Request) string {
	if r.PostForm.Get("back") == "key" {
		return orgPath(r) + "/keys/" + url.PathEscape(r.PathValue("name"))
	}
	return orgPath(r)
}

// refuseKey shows the page the action came from again with its refusal.
func (c *Console) refuseKey(w http.ResponseWriter, r *http.Request, s *session, err error, typed *keyData) error {
	status, msg, ok := problem(err)
	if !ok {
		return err
	}
	if r.PostForm.Get("back") == "key" && status != http.StatusNotFound {
		return c.showKey(w, r, s, status, msg, typed)
	}
	return c.showOrg(w, r, s, status, msg, keyForm{})
}

func (c *Console) setKeyEnabled(w http.ResponseWriter, r *http.Request, s *session) error {
	on := r.PostForm.Get("enabled") == "true"
	if err := c.call(r, http.MethodPatch, apiKeyPath(r), map[string]any{"enabled": on}, nil); err != nil {
		return c.refuseKey(w, r, s, err, nil)
	}
	word := "disabled"
	if on {
		word = "enabled"
	}
	c.redirectWith(w, r, s, back(r), flash{Notice: fmt.Sprintf("Key %q %s.", r.PathValue("name"), word)})
	return nil
}

func (c *Console) setKeyLimits(w http.ResponseWriter, r *http.Request, s *session) error {
	g := r.PostForm.Get
	typed := &keyData{Max: g("max_api_requests"), RLRequests: g("rl_requests"), RLPer: g("rl_per"), RLBurst: g("rl_burst"), RLShadow: g("rl_shadow") != ""}
	err := func() error {
		max, err := parseOptInt("max_api_requests", typed.Max)
		if err != nil {
			return err
		}
		rl, err := rateLimitBody("rate_limit", typed.RLRequests, typed.RLPer, typed.RLBurst, typed.RLShadow)
		if err != nil {
			return err
		}
		return c.call(r, http.MethodPatch, apiKeyPath(r), map[string]any{"max_api_requests": max, "rate_limit": rl}, nil)
	}()
	if err != nil {
		r.PostForm.Set("back", "key")
		return c.refuseKey(w, r, s, err, typed)
	}
	c.redirectWith(w, r, s, orgPath(r)+"/keys/"+url.PathEscape(r.PathValue("name")), flash{Notice: "Limits saved."})
	return nil
}

func (c *Console) rotateKey(w http.ResponseWriter, r *http.Request, s *session) error {
	var out struct {
		Name         string `json:"name"`
		AccessKey    string `json:"access_key"`
		AccessSecret string `json:"access_secret"`
		Until        string `json:"previous_secret_expires_at"`
	}
	body := map[string]any{}
	if g := strings.TrimSpace(r.PostForm.Get("grace")); g != "" {
		body["grace"] = g
	}
	if err := c.call(r, http.MethodPost, apiKeyPath(r)+"/rotate", body, &out); err != nil {
		return c.refuseKey(w, r, s, err, nil)
	}
	c.redirectWith(w, r, s, back(r), flash{Notice: fmt.Sprintf("Key %q rotated.", out.Name), OrgID: r.PathValue("id"),
		KeyName: out.Name, AccessKey: out.AccessKey, Secret: out.AccessSecret, Until: out.Until})
	return nil
}

func (c *Console) deleteKeyPage(w http.ResponseWriter, r *http.Request, s *session) error {
	ctx, cancel := c.ctx(r)
	defer cancel()
	k, err := c.opt.Manage.Store().KeyByName(ctx, r.PathValue("id"), r.PathValue("name"))
	if err != nil {
		return fmt.Errorf("reading key: %w", err)
	}
	v := c.newView(s, "Delete key "+k.Name, "orgs")
	v.Data = k
	c.render(w, http.StatusOK, "delete", v)
	return nil
}

func (c *Console) deleteKey(w http.ResponseWriter, r *http.Request, s *session) error {
	if err := c.call(r, http.MethodDelete, apiKeyPath(r), nil, nil); err != nil {
		return c.refuseKey(w, r, s, err, nil)
	}
	c.redirectWith(w, r, s, orgPath(r), flash{Notice: fmt.Sprintf("Key %q deleted.", r.PathValue("name"))})
	return nil
}

// ----- form fields -----

func optInt(v *int64) string {
	if v == nil {
		return ""
	}
	return strconv.FormatInt(*v, 10)
}

// parseOptInt reads an optional whole number: empty is null.
func parseOptInt(field, s string) (*int64, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	n, err := strconv.ParseInt(strings.ReplaceAll(s, "_", ""), 10, 64)
	if err != nil {
		return nil, &formError{field, "want a whole number, or nothing"}
	}
	return &n, nil
}

// maxLimitLines bounds the limits textarea.
const maxLimitLines = 64

// parseLimits reads "meter=value" lines (blank lines skipped); the operator
// API checks the names and values.
func parseLimits(s string) (map[string]int64, error) {
	out := map[string]int64{}
	lines := strings.Split(s, "\n")
	if len(lines) > maxLimitLines {
		return nil, &formError{"limits", fmt.Sprintf("at most %d lines", maxLimitLines)}
	}
	for i, line := range lines {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		name, value, ok := strings.Cut(line, "=")
		if !ok {
			name, value, ok = strings.Cut(line, ":")
		}
		if !ok {
			return nil, &formError{"limits", fmt.Sprintf("line %d: want meter=value", i+1)}
		}
		n, err := strconv.ParseInt(strings.ReplaceAll(strings.TrimSpace(value), "_", ""), 10, 64)
		if err != nil {
			return nil, &formError{"limits", fmt.Sprintf("line %d: %q is not a whole number", i+1, strings.TrimSpace(value))}
		}
		out[strings.TrimSpace(name)] = n
	}
	return out, nil
}

// rateLimitBody is a rate limit in the operator API's JSON form, or nil
// (no limit) when requests is empty.
func rateLimitBody(field, requests, per, burst string, shadow bool) (map[string]any, error) {
	n, err := parseOptInt(field+" requests", requests)
	if err != nil || n == nil {
		return nil, err
	}
	b, err := parseOptInt(field+" burst", burst)
	if err != nil {
		return nil, err
	}
	out := map[string]any{"requests": *n, "per": strings.TrimSpace(per), "shadow": shadow}
	if b != nil {
		out["burst"] = *b
	}
	return out, nil
}
