package gate

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"path"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/keygate/keygate/keys"
)

// Rule sets the permission and cost of the requests it matches.
type Rule struct {
	// Method is an HTTP method, or "*" (or empty) for any.
	Method string `yaml:"method" json:"method"`
	// Path is an exact path, a pattern in path.Match syntax, or a prefix
	// ending in "/*" that matches everything below it at any depth.
	Path string `yaml:"path" json:"path"`
	// Permission is the permission the key needs; empty keeps the default
	// (read for GET/HEAD/OPTIONS, write otherwise).
	Permission keys.Permission `yaml:"permission" json:"permission"`
	// Cost is charged to the quota; nil keeps the default of 1. Zero makes
	// the route free.
	Cost *int64 `yaml:"cost" json:"cost"`
}

// maxCost bounds a rule's cost so that a typo cannot drain a quota at once.
const maxCost = 1_000_000

// Rules are route rules in order: the first that matches wins. The zero
// value matches nothing, so every request gets the default rule.
//
// Paths match without regard to case and with or without one trailing
// slash, and a rule for GET also covers HEAD, because upstreams normalise
// paths that way and answer HEAD from GET: a rule must not be skipped by a
// spelling the upstream treats as the same route. The path matched is the
// canonical one (guard.CanonicalPath), which is also what the upstream
// receives.
type Rules struct {
	rules []Rule
	// patterns are the rules' paths lower-cased, without a trailing slash
	// (but "/"), so matching allocates nothing.
	patterns []string
}

// Route is what the rules say of a request: the permission it needs and
// its cost.
type Route struct {
	Permission keys.Permission
	Cost       int64
}

// Match returns the permission and cost of a request.
func (rs Rules) Match(method, p string) Route {
	for i, r := range rs.rules {
		if methodMatches(r.Method, method) && (matchLowered(rs.patterns[i], p) || matchAsWritten(r.Path, p)) {
			d := defaultRoute(method)
			if r.Permission != "" {
				d.Permission = r.Permission
			}
			if r.Cost != nil {
				d.Cost = *r.Cost
			}
			return d
		}
	}
	return defaultRoute(method)
}

func defaultRoute(method string) Route {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return Route{Permission: keys.PermRead, Cost: 1}
	default:
		return Route{Permission: keys.PermWrite, Cost: 1}
	}
}

// methodMatches reports whether a rule's method covers a request's: any
// method for "*" or empty, and HEAD for GET.
func methodMatches(rule, method string) bool {
	return rule == "" || rule == "*" || rule == method || rule == http.MethodGet && method == http.MethodHead
}

// matchPath reports whether p matches a rule's path pattern; see Rules.
func matchPath(pattern, p string) bool {
	return matchLowered(lowerPattern(pattern), p) || matchAsWritten(pattern, p)
}

// matchAsWritten matches p against the pattern as written, unfolded:
// folding must only widen a rule, and lower-casing can change what a
// pattern says ("İ" becomes "i̇", "[^a]" no longer matches "A").
func matchAsWritten(pattern, p string) bool {
	if prefix, ok := strings.CutSuffix(pattern, "/*"); ok {
		return p == prefix || len(p) > len(prefix) && p[len(prefix)] == '/' && p[:len(prefix)] == prefix
	}
	if !strings.ContainsAny(pattern, "*?[\\") {
		return pattern == p
	}
	ok, _ := path.Match(pattern, p) // patterns are validated at load time
	return ok
}

// lowerPattern is a pattern as matchLowered wants it. A trailing slash
// escaped by a backslash is kept: without it the pattern would end in a
// lone backslash and match nothing.
func lowerPattern(pattern string) string {
	lp := strings.ToLower(pattern)
	if strings.HasSuffix(lp, `\/`) {
		return lp
	}
	return trimSlash(lp)
}

// trimSlash drops one trailing slash, except from "/" and a prefix
// pattern's "/*".
func trimSlash(p string) string {
	if len(p) > 1 && p[len(p)-1] == '/' {
		return p[:len(p)-1]
	}
	return p
}

// matchLowered matches p against a lower-cased, trimmed pattern.
func matchLowered(pattern, p string) bool {
	p = trimSlash(p)
	if prefix, ok := strings.CutSuffix(pattern, "/*"); ok {
		return strings.EqualFold(p, prefix) ||
			len(p) > len(prefix) && p[len(prefix)] == '/' && strings.EqualFold(p[:len(prefix)], prefix)
	}
	if !strings.ContainsAny(pattern, "*?[\\") {
		return strings.EqualFold(pattern, p)
	}
	ok, _ := path.Match(pattern, lowerASCII(p)) // patterns are validated at load time
	return ok
}

// lowerASCII lower-cases p, allocating only when p has an upper-case letter.
func lowerASCII(p string) string {
	for i := 0; i < len(p); i++ {
		if c := p[i]; 'A' <= c && c <= 'Z' {
			return strings.ToLower(p)
		}
	}
	return p
}

// LoadRules reads route rules from a YAML (or JSON, a subset of YAML) file:
// a list of {method, path, permission, cost}. An empty name means no rules.
// An invalid rule is reported with its position and content.
func LoadRules(name string) (Rules, error) {
	if name == "" {
		return Rules{}, nil
	}
	b, err := os.ReadFile(name)
	if err != nil {
		return Rules{}, fmt.Errorf("reading route rules: %w", err)
	}
	return ParseRules(b)
}

// ParseRules parses route rules; see LoadRules. Each problem is reported
// on one line naming the rule by position, line and content.
func ParseRules(b []byte) (Rules, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return Rules{}, fmt.Errorf("route rules: %s", oneLine(err))
	}
	if len(doc.Content) == 0 {
		return Rules{}, nil // an empty file: no rules
	}
	list := doc.Content[0]
	if list.Kind != yaml.SequenceNode {
		return Rules{}, fmt.Errorf("route rules: line %d: want a list of rules (- method: …, path: …)", list.Line)
	}
	rules := make([]Rule, 0, len(list.Content))
	for i, node := range list.Content {
		r, err := decodeRule(node)
		if err == nil {
			err = r.validate()
		}
		if err != nil {
			return Rules{}, fmt.Errorf("route rule %d (%s %s, line %d): %s", i+1, r.Method, r.Path, node.Line, oneLine(err))
		}
		rules = append(rules, r)
	}
	patterns := make([]string, len(rules))
	for i, r := range rules {
		patterns[i] = lowerPattern(r.Path)
	}
	return Rules{rules: rules, patterns: patterns}, nil
}

// decodeRule decodes one rule strictly: a mapping of known fields only.
func decodeRule(node *yaml.Node) (Rule, error) {
	var r Rule
	if node.Kind != yaml.MappingNode {
		return r, errors.New("want a mapping of method, path, permission, cost")
	}
	if err := node.Decode(&r); err != nil {
		return r, err
	}
	for i := 0; i+1 < len(node.Content); i += 2 {
		switch k := node.Content[i].Value; k {
		case "method", "path", "permission", "cost":
		default:
			return r, fmt.Errorf("unknown field %q (want method, path, permission, cost)", k)
		}
	}
	return r, nil
}

// oneLine flattens a multi-line error (yaml.TypeError lists one problem per
// line) so start-up fails with a single line.
func oneLine(err error) string {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		return strings.Join(te.Errors, "; ")
	}
	return strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", "; ")), " ")
}

func (r Rule) validate() error {
	if r.Method != "" && r.Method != "*" && (strings.ToUpper(r.Method) != r.Method || strings.ContainsAny(r.Method, " /")) {
		return fmt.Errorf("method %q: want an upper-case HTTP method or *", r.Method)
	}
	if !strings.HasPrefix(r.Path, "/") {
		return fmt.Errorf("path %q: must start with /", r.Path)
	}
	if _, err := path.Match(strings.TrimSuffix(r.Path, "/*"), "/"); err != nil {
		return fmt.Errorf("path %q: %w", r.Path, err)
	}
	if r.Permission != "" {
		if _, err := keys.ParsePermission(string(r.Permission)); err != nil {
			return err
		}
	}
	if r.Cost != nil && (*r.Cost < 0 || *r.Cost > maxCost) {
		return fmt.Errorf("cost %d: must be between 0 and %d", *r.Cost, maxCost)
	}
	return nil
}
