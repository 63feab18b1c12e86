// Package proxy is keygate's data path and its self-served HTTP APIs.
//
// Handler parses the credential, authenticates it (keys), checks the route's
// permission, charges the request's cost (quota) in one store round trip, and
// forwards it with httputil.ReverseProxy (Rewrite); or it answers the request
// itself: the account endpoint (seed 002, account.go), key management (seed
// 000, v0.go; seed 003, user.go), partner routes (seed 001, partner.go). The
// operator API (admin.go) runs on its own listener. Every route is listed in
// routes.go and every error is rendered from one classification in errors.go.
//
// proxy imports the domain packages keys and quota, never their adapters:
// cmd/keygate picks and wires those.
package proxy
