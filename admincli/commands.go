package admincli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// command is one `keygate admin <resource> <verb>`: the operator route it
// calls, its arguments and flags, and how its answer is shown.
type command struct {
	resource, verb string
	// args name the positional arguments, all required. The route's
	// {placeholders} take the first ones in order; then, with bodyName,
	// one is the body's "name", or with pick, the id to choose.
	args     []string
	bodyName bool
	method   string
	route    string // as the OpenAPI document writes it
	// fields are the body flags; fixed fields are always sent. A command
	// with neither sends no body; file accepts -f.
	fields []field
	fixed  map[string]any
	file   bool
	// needChange: refuse to send an empty body (nothing to change).
	needChange bool
	// pick chooses one element of a list answer (an API without a route
	// for one of them): the raw element, or ok=false.
	pick    func(list []byte, id string) (elem []byte, ok bool, err error)
	noToken bool
	summary string
	show    func(w io.Writer, inv *invocation, raw []byte) error
	// example is an illustrative invocation, for -h.
	example string
}

func (c *command) name() string {
	return strings.TrimSpace(c.resource + " " + c.verb)
}

func (c *command) synopsis() string {
	s := c.name()
	for _, a := range c.args {
		s += " " + strings.ToUpper(a)
	}
	if len(c.fields) > 0 || c.file {
		s += " [flags]"
	}
	return s
}

func (c *command) usage() string {
	var b strings.Builder
	fmt.Fprintf(&b, "usage: keygate admin %s\n\n%s: %s %s\n", c.synopsis(), c.summary, c.method, c.route)
	if c.example != "" {
		fmt.Fprintf(&b, "\nexample:\n  %s\n", c.example)
	}
	if len(c.fields) > 0 || c.file {
		b.WriteString("\nflags (only those given are sent; the body field in parentheses):\n")
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		for _, f := range c.fields {
			fmt.Fprintf(tw, "  --%s\t%s (%s)\n", f.flag+kindHint(f.kind), f.usage, f.json)
		}
		if c.file {
			fmt.Fprintf(tw, "  -f FILE\tthe body as a JSON object from FILE (\"-\" = stdin); flags override its fields\n")
		}
		_ = tw.Flush()
	}
	b.WriteString("\n" + globalFlags)
	return b.String()
}

// shortUsage follows a usage error: the synopsis, and where the rest is.
func (c *command) shortUsage() string {
	return fmt.Sprintf("usage: keygate admin %s\n(keygate admin %s -h shows its flags)\n", c.synopsis(), c.name())
}

func kindHint(k kind) string {
	switch k {
	case kInt:
		return " N"
	case kQuota:
		return " N|none"
	case kBool:
		return "[=false]"
	case kRate:
		return " SPEC|none"
	case kLimits:
		return " M=N,…"
	case kList:
		return " A,B"
	case kTime:
		return " T|never"
	case kDuration:
		return " D"
	case kSecretFile:
		return " FILE"
	}
	return " TEXT"
}

// The body flags, shared by the commands that take them.
var (
	fName      = field{"name", "name", kString, "name"}
	fPrice     = field{"price", "price", kString, "price, as text (0.00)"}
	fPlanQuota = field{"quota", "max_api_requests", kQuota, "requests per period; none: unlimited"}
	fOrgQuota  = field{"quota", "max_api_requests", kQuota, "the organization's own request quota; none: the plan's"}
	fKeyQuota  = field{"quota", "max_api_requests", kQuota, "the key's own maximum, within the organization's quota; none: no maximum of its own"}
	fLimits    = field{"limits", "limits", kLimits, "limits of other meters, egress=5368709120,…; replaces all of them; none: no limits"}
	fKeyRate   = field{"key-rate-limit", "key_rate_limit", kRate, "rate limit of each key: N/PER[,burst=B][,shadow], e.g. 10/1m,burst=5; none: no limit"}
	fOrgRate   = field{"org-rate-limit", "org_rate_limit", kRate, "rate limit of each organization as a whole (same form); none: no limit"}
	fRate      = field{"rate-limit", "rate_limit", kRate, "own rate limit, N/PER[,burst=B][,shadow]; none: the plan's"}
	fEmail     = field{"email", "email", kString, "contact email"}
	fVerified  = field{"email-verified", "email_verified", kBool, "the email is verified"}
	fPlan      = field{"plan", "plan_id", kInt, "plan id (a patch switches at once)"}
	fPartner   = field{"partner", "partner", kBool, "a partner, which may create sub-accounts"}
	fUnlim     = field{"unlimited", "unlimited", kBool, "no request quota at all"}
	fPerms     = field{"permissions", "permissions", kList, "permissions: read, write, admin, pin, unpin (comma-separated)"}
	fComment   = field{"comment", "comment", kString, "free text"}
	fExpires   = field{"expires", "expires_at", kTime, "when the key stops working: RFC 3339, a duration from now (720h), or never"}
	fEnabled   = field{"enabled", "enabled", kBool, "the key works (--enabled=false disables it)"}
)

// commands is every command; each operator route has at least one.
var commands = []*command{
	{resource: "plans", verb: "list", method: "GET", route: "/admin/v1/plans",
		summary: "list plans", show: showPlans, example: "keygate admin plans list"},
	{resource: "plans", verb: "get", args: []string{"id"}, method: "GET", route: "/admin/v1/plans", pick: pickPlan,
		summary: "one plan (read from the list)", show: showPlan, example: "keygate admin plans get 1"},
	{resource: "plans", verb: "create", method: "POST", route: "/admin/v1/plans", file: true,
		fields:  []field{{"id", "id", kInt, "plan id, a positive integer"}, fName, fPrice, {"period", "period", kString, "when the quota resets: month (default), day, hour, none or a Go duration"}, fPlanQuota, fLimits, fKeyRate, fOrgRate},
		summary: "create a plan", show: showPlan,
		example: "keygate admin plans create --id 1 --name Free --price 0.00 --period month --quota 1000 --limits egress=5368709120"},
	{resource: "plans", verb: "patch", args: []string{"id"}, method: "PATCH", route: "/admin/v1/plans/{id}", file: true, needChange: true,
		fields:  []field{fName, fPrice, fPlanQuota, fLimits, fKeyRate, fOrgRate},
		summary: "change a plan (its period cannot change)", show: showPlan,
		example: "keygate admin plans patch 1 --key-rate-limit 10/1m,burst=5"},

	{resource: "orgs", verb: "list", method: "GET", route: "/admin/v1/orgs",
		summary: "list organizations", show: showOrgs, example: "keygate admin orgs list"},
	{resource: "orgs", verb: "get", args: []string{"id"}, method: "GET", route: "/admin/v1/orgs/{id}",
		summary: "one organization, with its usage", show: showOrg, example: "keygate admin orgs get $ORG"},
	{resource: "orgs", verb: "usage", args: []string{"id"}, method: "GET", route: "/admin/v1/orgs/{id}",
		summary: "an organization's usage this period", show: showUsage, example: "keygate admin orgs usage $ORG"},
	{resource: "orgs", verb: "create", method: "POST", route: "/admin/v1/orgs", file: true,
		fields: []field{{"id", "id", kString, "id (default: a new UUID)"}, fName, fEmail, fVerified, fPlan, fPartner, fOrgQuota, fUnlim,
			{"username", "username", kString, "username for the User API (seed 003)"},
			{"password-file", "password", kSecretFile, `password for the User API, first line of FILE ("-" = stdin)`}, fRate},
		summary: "create an organization", show: showOrg,
		example: "keygate admin orgs create --name Acme --email ops@acme.example --plan 1"},
	{resource: "orgs", verb: "patch", args: []string{"id"}, method: "PATCH", route: "/admin/v1/orgs/{id}", file: true, needChange: true,
		fields:  []field{fName, fEmail, fVerified, fPlan, fPartner, fUnlim, fOrgQuota, fRate},
		summary: "change an organization", show: showOrg, example: "keygate admin orgs patch $ORG --plan 2"},
	{resource: "orgs", verb: "suborgs", args: []string{"id"}, method: "GET", route: "/admin/v1/orgs/{id}/suborgs",
		summary: "a partner's sub-accounts", show: showOrgs, example: "keygate admin orgs suborgs $PARTNER"},

	{resource: "keys", verb: "list", args: []string{"org"}, method: "GET", route: "/admin/v1/orgs/{id}/keys",
		summary: "an organization's keys (never their secrets)", show: showKeys, example: "keygate admin keys list $ORG"},
	{resource: "keys", verb: "get", args: []string{"org", "name"}, method: "GET", route: "/admin/v1/orgs/{id}/keys/{name}",
		summary: "one key (never its secret)", show: showKey, example: "keygate admin keys get $ORG ci"},
	{resource: "keys", verb: "create", args: []string{"org", "name"}, bodyName: true, method: "POST", route: "/admin/v1/orgs/{id}/keys", file: true,
		fields:  []field{fPerms, fKeyQuota, fComment, fRate, fExpires, fEnabled},
		summary: "create a key; its secret is printed once", show: showNewKey,
		example: "keygate admin keys create $ORG ci --permissions read,write"},
	{resource: "keys", verb: "patch", args: []string{"org", "name"}, method: "PATCH", route: "/admin/v1/orgs/{id}/keys/{name}", file: true, needChange: true,
		fields:  []field{fPerms, fKeyQuota, fComment, fRate, fExpires, fEnabled},
		summary: "change a key", show: showKey, example: "keygate admin keys patch $ORG ci --quota 100 --expires 720h"},
	{resource: "keys", verb: "disable", args: []string{"org", "name"}, method: "PATCH", route: "/admin/v1/orgs/{id}/keys/{name}",
		fixed:   map[string]any{"enabled": false},
		summary: "disable a key (refused at once, kept)", show: showKey, example: "keygate admin keys disable $ORG ci"},
	{resource: "keys", verb: "enable", args: []string{"org", "name"}, method: "PATCH", route: "/admin/v1/orgs/{id}/keys/{name}",
		fixed:   map[string]any{"enabled": true},
		summary: "enable a disabled key", show: showKey, example: "keygate admin keys enable $ORG ci"},
	{resource: "keys", verb: "rotate", args: []string{"org", "name"}, method: "POST", route: "/admin/v1/orgs/{id}/keys/{name}/rotate",
		fields:  []field{{"grace", "grace", kDuration, "how long the previous secret keeps working (default 0s)"}},
		summary: "a new secret for a key, printed once", show: showRotation, example: "keygate admin keys rotate $ORG ci --grace 1h"},
	{resource: "keys", verb: "delete", args: []string{"org", "name"}, method: "DELETE", route: "/admin/v1/orgs/{id}/keys/{name}",
		summary: "delete a key (asks nothing)", show: showDeleted, example: "keygate admin keys delete $ORG ci"},

	{resource: "openapi", method: "GET", route: "/openapi.json", noToken: true,
		summary: "print the OpenAPI document (JSON)", show: showRaw, example: "keygate admin openapi | jq '.paths | keys'"},
}

// missing explains commands one might expect that the API has no route for.
var missing = map[string]string{
	"plans delete": "the operator API has no route to delete a plan (organizations refer to it); patch it instead",
	"orgs delete":  "the operator API has no route to delete an organization; delete its keys (keys delete) to cut its access",
}

func byResource(resource string) []*command {
	var out []*command
	for _, c := range commands {
		if c.resource == resource {
			out = append(out, c)
		}
	}
	return out
}

func lookup(resource, verb string) *command {
	for _, c := range commands {
		if c.resource == resource && c.verb == verb {
			return c
		}
	}
	return nil
}

// Command describes one command, for tests and documentation.
type Command struct {
	Name   string // "keys create"
	Method string
	Route  string // as the OpenAPI document writes it
}

// Commands returns every command and the operator route it calls.
func Commands() []Command {
	out := make([]Command, len(commands))
	for i, c := range commands {
		out[i] = Command{Name: c.name(), Method: c.method, Route: c.route}
	}
	return out
}
