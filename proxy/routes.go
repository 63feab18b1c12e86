package proxy

import (
	"net/http"
)

// selfHandler serves a self-served route; it fills rec for the access log.
type selfHandler func(w http.ResponseWriter, r *http.Request, rec *accessRecord)

// routeTable maps path → method → handler. Paths match exactly: keygate's
// own routes never shadow an upstream path below them.
type routeTable map[string]map[string]selfHandler

func (t routeTable) add(method, path string, h selfHandler) {
	if t[path] == nil {
		t[path] = make(map[string]selfHandler)
	}
	t[path][method] = h
}

// lookup returns the handler of a self-served route. A self-served path
// asked with another method goes upstream like any other request.
func (t routeTable) lookup(method, path string) (selfHandler, bool) {
	m, ok := t[path]
	if !ok {
		return nil, false
	}
	h, ok := m[method]
	return h, ok
}

// selfRoutes lists every route keygate answers itself on the data listener.
func (h *Handler) selfRoutes() routeTable {
	t := routeTable{}
	// seed 002
	t.add(http.MethodGet, "/api/v1/account", h.handleAccount)
	// seed 000
	t.add(http.MethodGet, "/api/v0/stats", h.handleV0Stats)
	t.add(http.MethodGet, "/api/v0/plans", h.handleV0Plans)
	t.add(http.MethodPost, "/api/v0/key", h.handleV0CreateKey)
	t.add(http.MethodGet, "/api/v0/keys", h.handleV0Keys)
	t.add(http.MethodDelete, "/api/v0/key", h.handleV0DeleteKey)
	// seed 001
	t.add(http.MethodPost, partnerPrefix+"create", h.partnerRoute(h.partnerCreate))
	t.add(http.MethodGet, partnerPrefix+"stats", h.partnerRoute(h.partnerStats))
	t.add(http.MethodPost, partnerPrefix+"update-plan", h.partnerRoute(h.partnerUpdatePlan))
	t.add(http.MethodPost, partnerPrefix+"key", h.partnerRoute(h.partnerCreateKey))
	t.add(http.MethodGet, partnerPrefix+"keys", h.partnerRoute(h.partnerKeys))
	t.add(http.MethodDelete, partnerPrefix+"key", h.partnerRoute(h.partnerDeleteKey))
	// seed 003
	t.add(http.MethodPost, "/user/apikeys", h.handleUserAPIKeys)
	t.add(http.MethodGet, "/user/apikeys", h.handleUserAPIKeys)
	t.add(http.MethodPost, "/user/create_apikey", h.handleUserCreateAPIKey)
	t.add(http.MethodPost, "/user/delete_apikey", h.handleUserDeleteAPIKey)
	return t
}
