package sidecar

import (
	"net/http"

	"github.com/keygate/keygate/listener"
	"github.com/keygate/keygate/portal"
	"github.com/keygate/keygate/selfserve/account"
	"github.com/keygate/keygate/selfserve/gw3"
	"github.com/keygate/keygate/selfserve/user"
)

// dataRoutes lists every route keygate answers itself on the data
// listener; every other request is the data path's (proxy). The operator
// API is on its own listener (admin).
func dataRoutes(acct *account.API, gw *gw3.API, usr *user.API, pt *portal.Portal) *listener.Routes {
	t := listener.NewRoutes()
	// seed 002
	t.Add(http.MethodGet, "/api/v1/account", acct.Account)
	// seed 000
	t.Add(http.MethodGet, "/api/v0/stats", gw.Stats)
	t.Add(http.MethodGet, "/api/v0/plans", gw.Plans)
	t.Add(http.MethodPost, "/api/v0/key", gw.CreateKey)
	t.Add(http.MethodGet, "/api/v0/keys", gw.Keys)
	t.Add(http.MethodDelete, "/api/v0/key", gw.DeleteKey)
	// seed 001
	t.Add(http.MethodPost, "/api/v0/partner/user/create", gw.Partner(gw.PartnerCreate))
	t.Add(http.MethodGet, "/api/v0/partner/user/stats", gw.Partner(gw.PartnerStats))
	t.Add(http.MethodPost, "/api/v0/partner/user/update-plan", gw.Partner(gw.PartnerUpdatePlan))
	t.Add(http.MethodPost, "/api/v0/partner/user/key", gw.Partner(gw.PartnerCreateKey))
	t.Add(http.MethodGet, "/api/v0/partner/user/keys", gw.Partner(gw.PartnerKeys))
	t.Add(http.MethodDelete, "/api/v0/partner/user/key", gw.Partner(gw.PartnerDeleteKey))
	// seed 003
	t.Add(http.MethodPost, "/user/apikeys", usr.APIKeys)
	t.Add(http.MethodGet, "/user/apikeys", usr.APIKeys)
	t.Add(http.MethodPost, "/user/create_apikey", usr.CreateAPIKey)
	t.Add(http.MethodPost, "/user/delete_apikey", usr.DeleteAPIKey)
	// the customer portal: static pages calling the routes above from the
	// browser; every path and method below /portal/ is its own (404, 405),
	// never the upstream's, and never charged
	t.Add(http.MethodGet, "/portal", pt.Redirect)
	t.Add(http.MethodHead, "/portal", pt.Redirect)
	t.AddTree(portal.Prefix, pt.Serve)
	return t
}
