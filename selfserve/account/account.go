// Package account is seed 002's account route on the data listener, GET
// /api/v1/account: the authenticated key's and its organization's quota.
// Errors use the data path's shapes, as the seed shows.
package account

import (
	"net/http"

	"go.uber.org/zap"

	"github.com/keygate/keygate/gate"
	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/listener"
	"github.com/keygate/keygate/manage"
	"github.com/keygate/keygate/metrics"
)

type accountResponse struct {
	CountsTowardQuota bool          `json:"counts_toward_quota"`
	RequestCost       int64         `json:"request_cost"`
	OrganizationID    string        `json:"organization_id"`
	APIKey            accountAPIKey `json:"api_key"`
	OrganizationQuota manage.Quota  `json:"organization_quota"`
}

type accountAPIKey struct {
	UID            string `json:"uid"`
	Name           string `json:"name"`
	CurrentUsage   int64  `json:"current_usage"`
	MaxAPIRequests *int64 `json:"max_api_requests"`
	CreatedAt      string `json:"created_at"`
}

// Options configure an API. Gate and Manage are required.
type Options struct {
	Gate   *gate.Decider
	Manage *manage.Service
	Log    *zap.Logger
}

// API serves the account route.
type API struct {
	opt Options
	log *zap.Logger
}

// New returns the account API for o.
func New(o Options) *API {
	if o.Gate == nil || o.Manage == nil {
		panic("account.New: Options.Gate and Manage are required")
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	return &API{opt: o, log: o.Log.Named("account")}
}

// Account answers GET /api/v1/account.
func (a *API) Account(w *listener.Writer, r *http.Request) {
	now := a.opt.Manage.Now()
	fail := func(err error) { w.Fail(r, err, now, a.log) }
	p, err := listener.Authenticate(a.opt.Gate, w, r)
	if err != nil {
		fail(err)
		return
	}
	ctx, cancel := a.opt.Manage.CallContext(r.Context())
	defer cancel()
	usage, err := a.opt.Manage.Counter().Usage(ctx, p.Key.OrgID, p.Key.UID, gate.PlanPeriod(p.Plan), now)
	if err != nil {
		fail(err)
		return
	}
	ks, err := a.opt.Manage.Store().Keys(ctx, p.Key.OrgID)
	if err != nil {
		fail(err)
		return
	}
	w.Outcome = metrics.OutcomeAdmitted
	gate.WriteJSON(w, http.StatusOK, accountResponse{
		CountsTowardQuota: false,
		RequestCost:       0,
		OrganizationID:    p.Key.OrgID,
		APIKey: accountAPIKey{
			UID:            p.Key.UID,
			Name:           p.Key.Name,
			CurrentUsage:   usage.Key,
			MaxAPIRequests: p.Key.MaxAPIRequests,
			CreatedAt:      p.Key.CreatedAt.UTC().Format(manage.TimeFormat),
		},
		OrganizationQuota: manage.OrgQuota(p.Org, p.Plan, usage, keys.Allocated(ks)),
	})
}
