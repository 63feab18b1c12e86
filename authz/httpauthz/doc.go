// Package httpauthz is keygate's HTTP authorization endpoint
// (KEYGATE_AUTHZ_ADDR): the front for proxies that keep forwarding
// themselves and only ask keygate whether a request may pass and who it is —
// nginx auth_request, Traefik ForwardAuth, Envoy's HTTP ext_authz.
//
// The request it receives stands for the client's: the original method and
// request target come from X-Forwarded-Method/X-Forwarded-Uri (Traefik) or
// X-Original-Method/X-Original-URI (nginx), else from the request itself
// (Envoy sends the client's method and path). They are bounded, validated and
// canonicalised as the data listener does (guard.CanonicalPath,
// KEYGATE_PATH_NORMALIZE), then decided by the one decision every front
// shares (gate.Decider.Decide): the same rules, permissions, rate limits,
// quotas, failure modes and signature checks, one charge per decision. An
// admitted request is answered 200 with the X-Keygate-* identity headers and
// the RateLimit headers; a refused one with the data path's status, body and
// headers (gate.Classify, gate.WriteDataProblem).
//
// httpauthz imports the decision, the listener base (its Writer, access log
// and request metrics), metrics and guard; never another front.
package httpauthz
