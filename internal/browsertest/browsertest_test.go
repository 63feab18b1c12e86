package browsertest

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/chromedp/chromedp"
)

// TestNewDrivesAPage loads a page from a loopback server and reads what the
// browser rendered, including what its script changed.
func TestNewDrivesAPage(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/app.js" {
			w.Header().Set("Content-Type", "text/javascript")
			fmt.Fprint(w, `document.getElementById("out").textContent = "ran";`)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, `<!doctype html><title>t</title><p id="out">static</p><script src="/app.js"></script>`)
	}))
	defer srv.Close()
	ctx := New(t)
	Do(t, ctx, chromedp.Navigate(srv.URL))
	got := Get(t, ctx, chromedp.Text(chromedp.CSS("#out")))
	if got != "ran" {
		t.Fatalf("page text %q, want ran", got)
	}
	Screenshot(t, ctx, t.TempDir()+"/shot.png")
}
