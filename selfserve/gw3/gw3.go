// Package gw3 is the account API of seeds 000 and 001 on the data
// listener, in their shared {"code","msg","data"} envelope: the account
// routes of seed 000 (gw3.go) and the partner routes of seed 001
// (partner.go).
package gw3

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"

	"go.uber.org/zap"

	"github.com/keygate/keygate/gate"
	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/listener"
	"github.com/keygate/keygate/manage"
	"github.com/keygate/keygate/meter"
	"github.com/keygate/keygate/metrics"
	"github.com/keygate/keygate/quota"
)

// Seed 000: the account API on the data listener — GET /api/v0/stats,
// GET /api/v0/plans, POST /api/v0/key, GET /api/v0/keys, DELETE /api/v0/key.
// Every answer, errors included, is the {"code","msg","data"} envelope with
// the HTTP status mirrored in code. Seed 001 (partner.go) shares the
// envelope and the stats.
//
// Meters in stats and plans: requests (the request quota), the five meters of
// the seed (pinned_count, pinned_bytes, ingress, egress, ipns) and any other
// meter a plan limits, each as "<meter>" (usage) and "<meter>_limit". A meter
// the plan does not limit has "<meter>_limit": null.

// v0Response is the envelope of seeds 000 and 001. Data is omitted when nil
// (errors and the seed's bare {"code":200,"msg":"ok"} answers).
type v0Response struct {
	Code int    `json:"code"`
	Msg  string `json:"msg"`
	Data any    `json:"data,omitempty"`
}

// Options configure an API. Gate and Manage are required.
type Options struct {
	Gate   *gate.Decider
	Manage *manage.Service
	// Provider is the provider field of the stats routes (default keygate).
	Provider string
	Log      *zap.Logger
}

// API serves the routes of seeds 000 and 001.
type API struct {
	opt Options
	log *zap.Logger
}

// New returns the API for o.
func New(o Options) *API {
	if o.Gate == nil || o.Manage == nil {
		panic("gw3.New: Options.Gate and Manage are required")
	}
	if o.Provider == "" {
		o.Provider = "keygate"
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	return &API{opt: o, log: o.Log.Named("gw3")}
}

// ok writes a successful answer.
func ok(w *listener.Writer, msg string, data any) {
	w.Outcome = metrics.OutcomeAdmitted
	gate.WriteJSON(w, http.StatusOK, v0Response{Code: http.StatusOK, Msg: msg, Data: data})
}

// fail renders err's problem in the envelope.
func (a *API) fail(w *listener.Writer, r *http.Request, err error) {
	p := w.Classify(r, err, a.opt.Manage.Now(), a.log)
	gate.SetRetryAfter(w.Header(), p.RetryAfter)
	gate.WriteJSON(w, p.Status, v0Response{Code: p.Status, Msg: p.Message})
}

// seedMeters are the meters of the seed 000/001 examples, in their order;
// stats and plans always show them.
var seedMeters = []string{"pinned_count", "pinned_bytes", meter.Ingress, meter.Egress, "ipns"}

// planMeters returns the meters shown for a plan: the seed's, then any other
// the plan limits, by name.
func planMeters(pl keys.Plan) []string {
	out := slices.Clone(seedMeters)
	var extra []string
	for name := range pl.Limits {
		if !slices.Contains(out, name) {
			extra = append(extra, name)
		}
	}
	sort.Strings(extra)
	return append(out, extra...)
}

// limitOf returns a plan's limit of meter, nil when it has none.
func limitOf(pl keys.Plan, meter string) *int64 {
	if v, ok := pl.Limits[meter]; ok {
		return &v
	}
	return nil
}

// requestLimit returns the organization's request quota, nil when unlimited.
func requestLimit(o keys.Org, pl keys.Plan) *int64 {
	if limit, _ := o.RequestQuota(pl); limit >= 0 {
		return &limit
	}
	return nil
}

// object is a JSON object that keeps its fields in order, so answers read
// like the seed examples.
type object []field

type field struct {
	name  string
	value any
}

func (o object) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, f := range o {
		if i > 0 {
			b.WriteByte(',')
		}
		k, err := json.Marshal(f.name)
		if err != nil {
			return nil, err
		}
		v, err := json.Marshal(f.value)
		if err != nil {
			return nil, fmt.Errorf("field %s: %w", f.name, err)
		}
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// orgStats returns the stats of an organization under plan: identity, plan
// name and every meter's usage and limit. extra fields (seed 001's next_plan
// and next_bill_at) follow the plan name.
func (a *API) orgStats(ctx context.Context, o keys.Org, pl keys.Plan, extra ...field) (object, error) {
	now := a.opt.Manage.Now()
	period := gate.PlanPeriod(pl)
	names := planMeters(pl)
	meters := make([]quota.Meter, len(names))
	for i, n := range names {
		meters[i] = meter.ForName(n, period)
	}
	used, err := a.opt.Manage.Counter().Meters(ctx, o.ID, now, meters)
	if err != nil {
		return nil, fmt.Errorf("reading meters: %w", err)
	}
	if len(used) != len(meters) {
		return nil, fmt.Errorf("reading meters: got %d values for %d meters", len(used), len(meters))
	}
	req, err := a.opt.Manage.Counter().Usage(ctx, o.ID, "", period, now)
	if err != nil {
		return nil, fmt.Errorf("reading request usage: %w", err)
	}
	out := object{
		{"name", o.Name},
		{"provider", a.opt.Provider},
		{"email", o.Email},
		{"email_verified", o.EmailVerified},
		{"plan", pl.Name},
	}
	out = append(out, extra...)
	for i, n := range names {
		out = append(out, field{n, used[i]}, field{n + "_limit", limitOf(pl, n)})
	}
	out = append(out, field{meter.Requests, req.Org}, field{meter.Requests + "_limit", requestLimit(o, pl)})
	return out, nil
}

// planObject is a plan as GET /api/v0/plans lists it.
func planObject(pl keys.Plan) object {
	out := object{{"id", pl.ID}, {"name", pl.Name}, {"price", pl.Price}}
	for _, n := range planMeters(pl) {
		out = append(out, field{n + "_limit", limitOf(pl, n)})
	}
	return append(out, field{meter.Requests + "_limit", pl.MaxAPIRequests})
}

// v0Key is a key as the seed lists it: never its secret.
type v0Key struct {
	Name        string   `json:"name"`
	AccessKey   string   `json:"access_key"`
	Permissions []string `json:"permissions"`
}

func v0Keys(ks []keys.Key) []v0Key {
	out := make([]v0Key, len(ks))
	for i, k := range ks {
		perms := make([]string, len(k.Permissions))
		for j, p := range k.Permissions {
			perms[j] = string(p)
		}
		out[i] = v0Key{Name: k.Name, AccessKey: k.UID, Permissions: perms}
	}
	return out
}

// v0NewKey is the answer to a key creation: the secret, shown once.
type v0NewKey struct {
	AccessKey    string `json:"access_key"`
	AccessSecret string `json:"access_secret"`
}

type v0KeyBody struct {
	Name        string   `json:"name"`
	Permissions []string `json:"permissions"`
}

type v0DeleteBody struct {
	Name string `json:"name"`
}

// v0Admin authenticates a key-management request: the key needs admin.
func (a *API) v0Admin(w *listener.Writer, r *http.Request) (keys.Principal, error) {
	p, err := listener.Authenticate(a.opt.Gate, w, r)
	if err != nil {
		return keys.Principal{}, err
	}
	if !p.Can(keys.PermAdmin) {
		return keys.Principal{}, &keys.PermissionError{Need: keys.PermAdmin}
	}
	return p, nil
}

// Stats answers the seed 000 route of that name.
func (a *API) Stats(w *listener.Writer, r *http.Request) {
	p, err := listener.Authenticate(a.opt.Gate, w, r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	ctx, cancel := a.opt.Manage.Context(r.Context())
	defer cancel()
	stats, err := a.orgStats(ctx, p.Org, p.Plan)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	// period_resets_at: when the current period's counts start again (Unix
	// seconds; null for a plan that never resets), so a customer can read
	// usage against its limit in time.
	var resetsAt *int64
	if end := gate.PlanPeriod(p.Plan).Window(a.opt.Manage.Now()).End; !end.IsZero() {
		s := end.Unix()
		resetsAt = &s
	}
	ok(w, "ok", append(stats, field{"period_resets_at", resetsAt}))
}

// Plans answers the seed 000 route of that name.
func (a *API) Plans(w *listener.Writer, r *http.Request) {
	if _, err := listener.Authenticate(a.opt.Gate, w, r); err != nil {
		a.fail(w, r, err)
		return
	}
	ctx, cancel := a.opt.Manage.Context(r.Context())
	defer cancel()
	pls, err := a.opt.Manage.Store().Plans(ctx)
	if err != nil {
		a.fail(w, r, fmt.Errorf("listing plans: %w", err))
		return
	}
	out := make([]object, len(pls))
	for i, pl := range pls {
		out[i] = planObject(pl)
	}
	ok(w, "", out) // the seed's plans answer has an empty msg
}

// CreateKey answers the seed 000 route of that name.
func (a *API) CreateKey(w *listener.Writer, r *http.Request) {
	p, err := a.v0Admin(w, r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	var b v0KeyBody
	if err := gate.DecodeJSON(w, r, &b); err != nil {
		a.fail(w, r, err)
		return
	}
	ctx, cancel := a.opt.Manage.Context(r.Context())
	defer cancel()
	nk, err := a.createNamedKey(ctx, p.Key.OrgID, b)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	ok(w, "ok", nk)
}

// createNamedKey creates a key from a seed 000/001 body in org.
func (a *API) createNamedKey(ctx context.Context, orgID string, b v0KeyBody) (v0NewKey, error) {
	if err := keys.ValidateName("name", b.Name); err != nil {
		return v0NewKey{}, err
	}
	perms, err := keys.ParsePermissions(b.Permissions)
	if err != nil {
		return v0NewKey{}, err
	}
	k, secret, err := a.opt.Manage.CreateKey(ctx, manage.NewKey{OrgID: orgID, Name: b.Name, Permissions: perms})
	if err != nil {
		return v0NewKey{}, manage.KeyConflict(err, b.Name)
	}
	return v0NewKey{AccessKey: k.UID, AccessSecret: secret}, nil
}

// Keys answers the seed 000 route of that name.
func (a *API) Keys(w *listener.Writer, r *http.Request) {
	p, err := a.v0Admin(w, r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	ctx, cancel := a.opt.Manage.Context(r.Context())
	defer cancel()
	ks, err := a.opt.Manage.Store().Keys(ctx, p.Key.OrgID)
	if err != nil {
		a.fail(w, r, fmt.Errorf("listing keys: %w", err))
		return
	}
	ok(w, "ok", v0Keys(ks))
}

// DeleteKey answers the seed 000 route of that name.
func (a *API) DeleteKey(w *listener.Writer, r *http.Request) {
	p, err := a.v0Admin(w, r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	var b v0DeleteBody
	if err := gate.DecodeJSON(w, r, &b); err != nil {
		a.fail(w, r, err)
		return
	}
	ctx, cancel := a.opt.Manage.Context(r.Context())
	defer cancel()
	if err := a.deleteNamedKey(ctx, p.Key.OrgID, b.Name); err != nil {
		a.fail(w, r, err)
		return
	}
	ok(w, "ok", nil)
}

// deleteNamedKey deletes the key called name in org and revokes it.
func (a *API) deleteNamedKey(ctx context.Context, orgID, name string) error {
	if err := keys.ValidateName("name", name); err != nil {
		return err
	}
	if _, err := a.opt.Manage.DeleteKey(ctx, orgID, name); err != nil {
		if errors.Is(err, keys.ErrNotFound) {
			return &gate.ClientError{Status: http.StatusNotFound, Msg: fmt.Sprintf("no key named %q", name)}
		}
		return err
	}
	return nil
}
