package layout

import (
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"strings"
	"testing"
)

// TestModuleFollowsLayout lists every package of the module with go list
// and fails on an import the layout forbids.
func TestModuleFollowsLayout(t *testing.T) {
	cmd := exec.Command("go", "list", "-json=ImportPath,Imports", Module+"/...")
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("go list: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("go list: %v", err)
	}
	imports := map[string][]string{}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p struct {
			ImportPath string
			Imports    []string
		}
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		imports[p.ImportPath] = p.Imports
	}
	if len(imports) < 10 {
		t.Fatalf("go list found only %d packages", len(imports))
	}
	if problems := Check(Layers, imports); len(problems) > 0 {
		t.Errorf("imports that break the layout:\n  %s\nthe layout:\n%s", strings.Join(problems, "\n  "), Describe(Layers))
	}
}

// TestCheckCatchesForbiddenArrows proves the check fails on each kind of
// forbidden import.
func TestCheckCatchesForbiddenArrows(t *testing.T) {
	m := func(s string) string { return Module + "/" + s }
	cases := map[string]map[string][]string{
		"front imports front":     {m("proxy"): {m("admin")}},
		"decision imports front":  {m("gate"): {m("proxy")}},
		"domain imports http":     {m("keys"): {"net/http"}},
		"domain imports decision": {m("quota/memcounter"): {m("gate")}},
		"decision forwards":       {m("gate"): {"net/http/httputil"}},
		"front imports adapter":   {m("selfserve/gw3"): {m("keys/redisstore")}},
		"front imports wiring":    {m("proxy"): {m("sidecar")}},
		"unplaced package":        {m("newthing"): nil},
	}
	for name, imports := range cases {
		if got := Check(Layers, imports); len(got) != 1 {
			t.Errorf("%s: got %q, want one problem", name, got)
		}
	}
	allowed := map[string][]string{
		m("proxy"):           {m("gate"), m("listener"), m("meter"), m("keys"), "net/http/httputil"},
		m("gate"):            {m("keys"), m("quota"), m("metrics"), "net/http"},
		m("sidecar"):         {m("proxy"), m("admin")},
		m("keys/redisstore"): {m("keys"), m("internal/redisfail")},
	}
	if got := Check(Layers, allowed); len(got) != 0 {
		t.Errorf("allowed arrows refused: %q", got)
	}
}
