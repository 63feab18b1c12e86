// Package browsertest starts a real headless Chromium (Debian's package,
// /usr/bin/chromium) for tests of keygate's web pages, driven through
// chromedp. Like the other real parts of the suite, a missing browser skips
// the test locally and fails it when KEYGATE_TEST_BROWSER=require (CI).
package browsertest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// Path is where Debian's chromium package puts the browser.
const Path = "/usr/bin/chromium"

// budget bounds one test's whole use of the browser: a browser that hangs
// fails the test instead of holding the suite.
const budget = 90 * time.Second

// New starts a headless Chromium with a fresh profile and returns a
// context for chromedp.Run on its first tab. The browser is killed and its
// profile removed when the test ends.
func New(t testing.TB) context.Context {
	t.Helper()
	if _, err := exec.LookPath(Path); err != nil {
		if os.Getenv("KEYGATE_TEST_BROWSER") == "require" {
			t.Fatalf("KEYGATE_TEST_BROWSER=require but %s is not there: apt-get install chromium", Path)
		}
		t.Skipf("no %s (apt-get install chromium; KEYGATE_TEST_BROWSER=require makes this a failure)", Path)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(Path),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.Flag("disable-gpu", true),
		// Nothing leaves the machine: no QUIC, no background fetches, no
		// component or sync traffic.
		chromedp.Flag("disable-quic", true),
		chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
	}
	ctx, cancelTimeout := context.WithTimeout(context.Background(), budget)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	tabCtx, cancelTab := chromedp.NewContext(allocCtx)
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc() // kills the browser and waits for it
		cancelTimeout()
	})
	if err := chromedp.Do(tabCtx); err != nil { // starts the browser
		t.Fatalf("starting %s: %v", Path, err)
	}
	return tabCtx
}

// Screenshot writes a PNG of the whole current page to path, relative to
// the directory named by KEYGATE_SCREENSHOTS (what `make screenshots`
// sets); without that variable it does nothing, so tests can take their
// screenshots unconditionally.
func Screenshot(t testing.TB, ctx context.Context, path string) {
	t.Helper()
	dir := os.Getenv("KEYGATE_SCREENSHOTS")
	if dir == "" {
		return
	}
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // 100: PNG, not JPEG
	if err != nil {
		t.Fatalf("screenshot %s: %v", path, err)
	}
	out := filepath.Join(dir, path)
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(out, png, 0o644); err != nil {
		t.Fatalf("screenshot %s: %v", path, err)
	}
}
