package proxy

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/quota"
)

// Seed 002: GET /api/v1/account — the authenticated key's and its
// organization's quota. Errors use the data path's shapes, as the seed shows.

type accountResponse struct {
	CountsTowardQuota bool          `json:"counts_toward_quota"`
	RequestCost       int64         `json:"request_cost"`
	OrganizationID    string        `json:"organization_id"`
	APIKey            accountAPIKey `json:"api_key"`
	OrganizationQuota accountQuota  `json:"organization_quota"`
}

type accountAPIKey struct {
	UID            string `json:"uid"`
	Name           string `json:"name"`
	CurrentUsage   int64  `json:"current_usage"`
	MaxAPIRequests *int64 `json:"max_api_requests"`
	CreatedAt      string `json:"created_at"`
}

// accountQuota reports null for the quota fields of an unlimited
// organization: there is no number to give.
type accountQuota struct {
	TotalUsage           int64  `json:"total_usage"`
	TotalQuota           *int64 `json:"total_quota"`
	CurrentUsage         int64  `json:"current_usage"`
	MaxAPIRequests       *int64 `json:"max_api_requests"`
	AllocatedAPIKeyQuota int64  `json:"allocated_api_key_quota"`
	AvailableAPIKeyQuota *int64 `json:"available_api_key_quota"`
	Source               string `json:"source"`
	Unlimited            bool   `json:"unlimited"`
}

// isoMillis is the created_at format of seed 002.
const isoMillis = "2006-01-02T15:04:05.000Z07:00"

func (h *Handler) handleAccount(w http.ResponseWriter, r *http.Request, rec *accessRecord) {
	fail := func(err error) { h.fail(w, r, rec, err) }
	p, err := h.selfAuth(r, rec)
	if err != nil {
		fail(err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.opt.StoreTimeout)
	defer cancel()
	now := h.opt.Now()
	usage, err := h.opt.Counter.Usage(ctx, p.Key.OrgID, p.Key.UID, planPeriod(p.Plan), now)
	if err != nil {
		fail(err)
		return
	}
	ks, err := h.opt.Store.Keys(ctx, p.Key.OrgID)
	if err != nil {
		fail(err)
		return
	}
	rec.outcome = outcomeAdmitted
	writeJSON(w, http.StatusOK, accountResponse{
		CountsTowardQuota: false,
		RequestCost:       0,
		OrganizationID:    p.Key.OrgID,
		APIKey: accountAPIKey{
			UID:            p.Key.UID,
			Name:           p.Key.Name,
			CurrentUsage:   usage.Key,
			MaxAPIRequests: p.Key.MaxAPIRequests,
			CreatedAt:      p.Key.CreatedAt.UTC().Format(isoMillis),
		},
		OrganizationQuota: orgQuota(p.Org, p.Plan, usage, keys.Allocated(ks)),
	})
}

func orgQuota(o keys.Org, pl keys.Plan, usage quota.Usage, allocated int64) accountQuota {
	limit, source := o.RequestQuota(pl)
	q := accountQuota{
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

// selfAuth authenticates a self-served request from its headers.
func (h *Handler) selfAuth(r *http.Request, rec *accessRecord) (keys.Principal, error) {
	cred, err := credentialFrom(r.Header)
	if err != nil {
		return keys.Principal{}, err
	}
	return h.authenticateRecorded(r, cred, rec)
}

// authenticateRecorded authenticates within the store timeout and notes the
// principal in the access record.
func (h *Handler) authenticateRecorded(r *http.Request, cred credential, rec *accessRecord) (keys.Principal, error) {
	ctx, cancel := context.WithTimeout(r.Context(), h.opt.StoreTimeout)
	defer cancel()
	p, err := h.authenticate(ctx, r, cred)
	if err != nil {
		return keys.Principal{}, err
	}
	if p.Stale {
		// Self-served answers need the store anyway; do not act on a
		// principal the store could not confirm.
		return keys.Principal{}, errors.Join(keys.ErrUnavailable, errors.New("principal not confirmed"))
	}
	rec.org, rec.key = p.Key.OrgID, p.Key.UID
	return p, nil
}

// storeCtx bounds a self-served route's store calls.
func (h *Handler) storeCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, 4*h.opt.StoreTimeout+time.Second)
}
