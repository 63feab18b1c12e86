// Package layout states which keygate package may import which, and its
// test checks the module against it: domain packages import no HTTP, the
// decision imports no front, fronts never import each other, and only
// sidecar and cmd wire everything.
package layout

import (
	"fmt"
	"slices"
	"strings"
)

// Module is the module path all package names below are relative to.
const Module = "github.com/keygate/keygate"

// Layer is a group of packages and what they may import.
type Layer struct {
	Name string
	// Packages are package paths relative to Module; a trailing "/..."
	// also covers every package below.
	Packages []string
	// May lists the layers whose packages this layer may import (besides
	// its own packages).
	May []string
	// NoStd lists standard-library packages the layer must not import.
	NoStd []string
}

// Layers is the architecture. A keygate package that no layer names is an
// error: every new package is placed deliberately.
var Layers = []Layer{
	{Name: "support", Packages: []string{"internal/redisfail"}},
	{Name: "domain", Packages: []string{"keys", "quota"}, NoStd: []string{"net/http", "net/http/httputil"}},
	// The stores and counters, and the conformance suites they pass; only
	// the wiring picks them.
	{Name: "adapters", Packages: []string{"keys/...", "quota/..."}, May: []string{"domain", "support"},
		NoStd: []string{"net/http", "net/http/httputil"}},
	{Name: "metrics", Packages: []string{"metrics"}, May: []string{"domain"}, NoStd: []string{"net/http"}},
	{Name: "meter", Packages: []string{"meter"}, May: []string{"domain", "metrics"}, NoStd: []string{"net/http"}},
	{Name: "standalone", Packages: []string{"openapi", "guard", "inject", "cmd/demo-upstream", "cmd/loadtest"}},
	{Name: "decision", Packages: []string{"gate"}, May: []string{"domain", "metrics", "standalone"},
		NoStd: []string{"net/http/httputil"}},
	{Name: "manage", Packages: []string{"manage"}, May: []string{"decision", "domain", "metrics"}, NoStd: []string{"net/http/httputil"}},
	{Name: "listener", Packages: []string{"listener"}, May: []string{"decision", "domain", "metrics", "standalone"}},
	// Each front is a layer of its own, so that fronts cannot import each
	// other.
	{Name: "front proxy", Packages: []string{"proxy"}, May: frontMay},
	{Name: "front admin", Packages: []string{"admin"}, May: frontMay},
	{Name: "front account", Packages: []string{"selfserve/account"}, May: frontMay},
	{Name: "front gw3", Packages: []string{"selfserve/gw3"}, May: frontMay},
	{Name: "front user", Packages: []string{"selfserve/user"}, May: frontMay},
	// The operator API's command-line client talks HTTP to it: no store,
	// no front.
	{Name: "admin client", Packages: []string{"admincli"}, May: []string{"domain", "standalone"}},
	{Name: "front portal", Packages: []string{"portal"}, May: frontMay},
	{Name: "front console", Packages: []string{"console"}, May: frontMay},
	{Name: "front authz http", Packages: []string{"authz/httpauthz"}, May: frontMay},
	{Name: "front extauthz", Packages: []string{"authz/extauthz"}, May: frontMay},
	{Name: "wiring", Packages: []string{"sidecar"}, May: []string{"*"}},
	{Name: "test support", Packages: []string{"internal/redistest", "internal/sidecartest", "internal/nginxtest", "internal/fleet", "internal/layout", "internal/browsertest"}, May: []string{"*"}},
	{Name: "command", Packages: []string{"cmd/keygate"}, May: []string{"*"}},
}

// frontMay is what every front may import.
var frontMay = []string{"decision", "manage", "listener", "meter", "metrics", "domain", "standalone"}

// layerOf returns the layer of a package path relative to Module.
func layerOf(layers []Layer, pkg string) (Layer, bool) {
	for _, l := range layers {
		for _, p := range l.Packages {
			if prefix, ok := strings.CutSuffix(p, "/..."); ok {
				if pkg == prefix || strings.HasPrefix(pkg, prefix+"/") {
					return l, true
				}
			} else if pkg == p {
				return l, true
			}
		}
	}
	return Layer{}, false
}

// Check returns one line per forbidden arrow in imports (package → its
// non-test imports, full paths).
func Check(layers []Layer, imports map[string][]string) []string {
	var problems []string
	pkgs := make([]string, 0, len(imports))
	for p := range imports {
		pkgs = append(pkgs, p)
	}
	slices.Sort(pkgs)
	for _, full := range pkgs {
		rel, ok := strings.CutPrefix(full, Module+"/")
		if !ok {
			continue
		}
		from, ok := layerOf(layers, rel)
		if !ok {
			problems = append(problems, fmt.Sprintf("%s: in no layer of internal/layout: place it", rel))
			continue
		}
		for _, imp := range imports[full] {
			irel, internal := strings.CutPrefix(imp, Module+"/")
			if !internal {
				if slices.Contains(from.NoStd, imp) {
					problems = append(problems, fmt.Sprintf("%s (%s) imports %s, which its layer must not", rel, from.Name, imp))
				}
				continue
			}
			to, ok := layerOf(layers, irel)
			if !ok {
				problems = append(problems, fmt.Sprintf("%s imports %s, which is in no layer", rel, irel))
				continue
			}
			if to.Name == from.Name || slices.Contains(from.May, "*") || slices.Contains(from.May, to.Name) {
				continue
			}
			problems = append(problems, fmt.Sprintf("%s (%s) imports %s (%s): not allowed", rel, from.Name, irel, to.Name))
		}
	}
	return problems
}

// Describe is the rule in words, for the failure message.
func Describe(layers []Layer) string {
	var b strings.Builder
	for _, l := range layers {
		fmt.Fprintf(&b, "  %-14s %-40s may import: %s\n", l.Name, strings.Join(l.Packages, " "), strings.Join(l.May, ", "))
	}
	return b.String()
}
