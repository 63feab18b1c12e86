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
type Rules struct {
	rules []Rule
}

// Route is what the rules say of a request: the permission it needs and
// its cost.
type Route struct {
	Permission keys.Permission
	Cost       int64
}

// Match returns the permission and cost of a request.
func (rs Rules) Match(method, p string) Route {
	for _, r := range rs.rules {
		if (r.Method == "" || r.Method == "*" || r.Method == method) && matchPath(r.Path, p) {
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

func matchPath(pattern, p string) bool {
	if prefix, ok := strings.CutSuffix(pattern, "/*"); ok {
		return p == prefix || strings.HasPrefix(p, prefix+"/")
	}
	if !strings.ContainsAny(pattern, "*?[\\") {
		return pattern == p
	}
	ok, _ := path.Match(pattern, p) // patterns are validated at load time
	return ok
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
	return Rules{rules: rules}, nil
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
