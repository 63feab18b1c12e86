package proxy

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

	"github.com/keygate/keygate/keys"
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

// v0OK writes a successful answer.
func v0OK(w http.ResponseWriter, rec *accessRecord, msg string, data any) {
	rec.outcome = outcomeAdmitted
	writeJSON(w, http.StatusOK, v0Response{Code: http.StatusOK, Msg: msg, Data: data})
}

// v0Fail renders err's problem in the envelope.
func (h *Handler) v0Fail(w http.ResponseWriter, r *http.Request, rec *accessRecord, err error) {
	p := classify(err, h.opt.Now())
	rec.outcome = p.outcome
	if p.internal {
		h.log.Error("request failed", zap.String("path", r.URL.Path), zap.Error(err))
	}
	setRetryAfter(w.Header(), p.retryAfter)
	writeJSON(w, p.status, v0Response{Code: p.status, Msg: p.message})
}

// seedMeters are the meters of the seed 000/001 examples, in their order;
// stats and plans always show them.
var seedMeters = []string{"pinned_count", "pinned_bytes", meterIngress, meterEgress, "ipns"}

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
func (h *Handler) orgStats(ctx context.Context, o keys.Org, pl keys.Plan, extra ...field) (object, error) {
	now := h.opt.Now()
	period := planPeriod(pl)
	names := planMeters(pl)
	meters := make([]quota.Meter, len(names))
	for i, n := range names {
		meters[i] = reportedMeter(n, period)
	}
	used, err := h.opt.Counter.Meters(ctx, o.ID, now, meters)
	if err != nil {
		return nil, fmt.Errorf("reading meters: %w", err)
	}
	if len(used) != len(meters) {
		return nil, fmt.Errorf("reading meters: got %d values for %d meters", len(used), len(meters))
	}
	req, err := h.opt.Counter.Usage(ctx, o.ID, "", period, now)
	if err != nil {
		return nil, fmt.Errorf("reading request usage: %w", err)
	}
	out := object{
		{"name", o.Name},
		{"provider", h.opt.Provider},
		{"email", o.Email},
		{"email_verified", o.EmailVerified},
		{"plan", pl.Name},
	}
	out = append(out, extra...)
	for i, n := range names {
		out = append(out, field{n, used[i]}, field{n + "_limit", limitOf(pl, n)})
	}
	out = append(out, field{meterRequests, req.Org}, field{meterRequests + "_limit", requestLimit(o, pl)})
	return out, nil
}

// planObject is a plan as GET /api/v0/plans lists it.
func planObject(pl keys.Plan) object {
	out := object{{"id", pl.ID}, {"name", pl.Name}, {"price", pl.Price}}
	for _, n := range planMeters(pl) {
		out = append(out, field{n + "_limit", limitOf(pl, n)})
	}
	return append(out, field{meterRequests + "_limit", pl.MaxAPIRequests})
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
func (h *Handler) v0Admin(r *http.Request, rec *accessRecord) (keys.Principal, error) {
	p, err := h.selfAuth(r, rec)
	if err != nil {
		return keys.Principal{}, err
	}
	if !p.Can(keys.PermAdmin) {
		return keys.Principal{}, &keys.PermissionError{Need: keys.PermAdmin}
	}
	return p, nil
}

func (h *Handler) handleV0Stats(w http.ResponseWriter, r *http.Request, rec *accessRecord) {
	p, err := h.selfAuth(r, rec)
	if err != nil {
		h.v0Fail(w, r, rec, err)
		return
	}
	ctx, cancel := h.storeCtx(r.Context())
	defer cancel()
	stats, err := h.orgStats(ctx, p.Org, p.Plan)
	if err != nil {
		h.v0Fail(w, r, rec, err)
		return
	}
	v0OK(w, rec, "ok", stats)
}

func (h *Handler) handleV0Plans(w http.ResponseWriter, r *http.Request, rec *accessRecord) {
	if _, err := h.selfAuth(r, rec); err != nil {
		h.v0Fail(w, r, rec, err)
		return
	}
	ctx, cancel := h.storeCtx(r.Context())
	defer cancel()
	pls, err := h.opt.Store.Plans(ctx)
	if err != nil {
		h.v0Fail(w, r, rec, fmt.Errorf("listing plans: %w", err))
		return
	}
	out := make([]object, len(pls))
	for i, pl := range pls {
		out[i] = planObject(pl)
	}
	v0OK(w, rec, "", out) // the seed's plans answer has an empty msg
}

func (h *Handler) handleV0CreateKey(w http.ResponseWriter, r *http.Request, rec *accessRecord) {
	p, err := h.v0Admin(r, rec)
	if err != nil {
		h.v0Fail(w, r, rec, err)
		return
	}
	var b v0KeyBody
	if err := decodeJSON(w, r, &b); err != nil {
		h.v0Fail(w, r, rec, err)
		return
	}
	ctx, cancel := h.storeCtx(r.Context())
	defer cancel()
	nk, err := h.createNamedKey(ctx, p.Key.OrgID, b)
	if err != nil {
		h.v0Fail(w, r, rec, err)
		return
	}
	v0OK(w, rec, "ok", nk)
}

// createNamedKey creates a key from a seed 000/001 body in org.
func (h *Handler) createNamedKey(ctx context.Context, orgID string, b v0KeyBody) (v0NewKey, error) {
	if err := keys.ValidateName("name", b.Name); err != nil {
		return v0NewKey{}, err
	}
	perms, err := keys.ParsePermissions(b.Permissions)
	if err != nil {
		return v0NewKey{}, err
	}
	k, secret, err := h.createKey(ctx, newKeyRequest{orgID: orgID, name: b.Name, permissions: perms})
	if err != nil {
		return v0NewKey{}, keyConflict(err, b.Name)
	}
	return v0NewKey{AccessKey: k.UID, AccessSecret: secret}, nil
}

func (h *Handler) handleV0Keys(w http.ResponseWriter, r *http.Request, rec *accessRecord) {
	p, err := h.v0Admin(r, rec)
	if err != nil {
		h.v0Fail(w, r, rec, err)
		return
	}
	ctx, cancel := h.storeCtx(r.Context())
	defer cancel()
	ks, err := h.opt.Store.Keys(ctx, p.Key.OrgID)
	if err != nil {
		h.v0Fail(w, r, rec, fmt.Errorf("listing keys: %w", err))
		return
	}
	v0OK(w, rec, "ok", v0Keys(ks))
}

func (h *Handler) handleV0DeleteKey(w http.ResponseWriter, r *http.Request, rec *accessRecord) {
	p, err := h.v0Admin(r, rec)
	if err != nil {
		h.v0Fail(w, r, rec, err)
		return
	}
	var b v0DeleteBody
	if err := decodeJSON(w, r, &b); err != nil {
		h.v0Fail(w, r, rec, err)
		return
	}
	ctx, cancel := h.storeCtx(r.Context())
	defer cancel()
	if err := h.deleteNamedKey(ctx, p.Key.OrgID, b.Name); err != nil {
		h.v0Fail(w, r, rec, err)
		return
	}
	v0OK(w, rec, "ok", nil)
}

// deleteNamedKey deletes the key called name in org and revokes it.
func (h *Handler) deleteNamedKey(ctx context.Context, orgID, name string) error {
	if err := keys.ValidateName("name", name); err != nil {
		return err
	}
	if _, err := h.deleteKey(ctx, orgID, name); err != nil {
		if errors.Is(err, keys.ErrNotFound) {
			return &badRequestError{status: http.StatusNotFound, msg: fmt.Sprintf("no key named %q", name)}
		}
		return err
	}
	return nil
}
