package guard

import (
	"go/build"
	"strings"
	"testing"
)

// guard stays a leaf: no keygate package and nothing of net/http, so that
// the decision and every front can use it.
func TestImports(t *testing.T) {
	pkg, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, imp := range pkg.Imports {
		if strings.HasPrefix(imp, "github.com/keygate/") || strings.HasPrefix(imp, "net/http") {
			t.Errorf("guard imports %s", imp)
		}
	}
}
