// Package browsertest starts Debian's headless Chromium for a test and hands
// back a chromedp context driving one tab of it, so the console and portal
// tests drive the real pages in a real browser.
//
// Chromium is /usr/bin/chromium (or $KEYGATE_CHROMIUM). When it is missing
// the test is skipped, unless KEYGATE_TEST_BROWSER=require (as CI and
// scripts/test.sh set), which fails it instead.
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

// DefaultTimeout bounds everything one test does in its browser.
const DefaultTimeout = 40 * time.Second

// Options tune New; the zero value is a 1280×900 window and DefaultTimeout.
type Options struct {
	Width, Height int
	Timeout       time.Duration
}

// Path returns the Chromium binary the tests use, or "" when there is none.
func Path() string {
	if p := os.Getenv("KEYGATE_CHROMIUM"); p != "" {
		return p
	}
	for _, p := range []string{"/usr/bin/chromium", "/usr/bin/chromium-browser"} {
		if _, err := exec.LookPath(p); err == nil {
			return p
		}
	}
	return ""
}

// New starts a headless Chromium with a fresh profile and returns a
// chromedp context for one tab, bounded by DefaultTimeout. The browser is
// stopped and its profile removed when the test ends.
func New(t testing.TB) context.Context {
	t.Helper()
	return NewWith(t, Options{})
}

// NewWith is New with options.
func NewWith(t testing.TB, o Options) context.Context {
	t.Helper()
	path := Path()
	if path == "" {
		if os.Getenv("KEYGATE_TEST_BROWSER") == "require" {
			t.Fatal("KEYGATE_TEST_BROWSER=require but no chromium (apt-get install chromium)")
		}
		t.Skip("no chromium; set KEYGATE_TEST_BROWSER=require to fail instead")
	}
	if o.Width == 0 {
		o.Width, o.Height = 1280, 900
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	// Every flag that stops Chromium reaching out on its own: the machines
	// the tests run on have no internet, and its background requests would
	// only fail (or hang) there.
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.UserDataDir(filepath.Join(t.TempDir(), "profile")),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.WindowSize(o.Width, o.Height),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-features", "Translate,OptimizationHints,MediaRouter,AutofillServerCommunication"),
		chromedp.Flag("metrics-recording-only", true),
		chromedp.Flag("safebrowsing-disable-auto-update", true),
		chromedp.Flag("password-store", "basic"),
		chromedp.Flag("use-mock-keychain", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.Flag("force-color-profile", "srgb"),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(actx, chromedp.WithErrorf(t.Logf))
	ctx, cancelTimeout := context.WithTimeout(ctx, o.Timeout)
	t.Cleanup(func() {
		cancelTimeout()
		cancelTab()
		cancelAlloc() // waits for the browser process to exit
	})
	// Start the browser now, so a broken install fails here with its cause.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting chromium (%s): %v", path, err)
	}
	return ctx
}

// Do runs steps in the test's browser and fails the test on error.
func Do(t testing.TB, ctx context.Context, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("browser: %v", err)
	}
}

// Get runs one action that answers a value (Text, Value, Location, …) and
// fails the test on error.
func Get[T any](t testing.TB, ctx context.Context, a chromedp.Action[T]) T {
	t.Helper()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatalf("browser: %v", err)
	}
	return v
}

// Screenshot writes a PNG of the whole page to path (its directory is
// created).
func Screenshot(t testing.TB, ctx context.Context, path string) {
	t.Helper()
	png := Get(t, ctx, chromedp.FullScreenshot(100))
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
}

// Shot is Screenshot into the directory KEYGATE_SCREENSHOTS names (what
// `make screenshots` sets), under name; without that variable it does
// nothing, so tests can take the docs' screenshots unconditionally.
func Shot(t testing.TB, ctx context.Context, name string) {
	t.Helper()
	if dir := os.Getenv("KEYGATE_SCREENSHOTS"); dir != "" {
		Screenshot(t, ctx, filepath.Join(dir, name))
	}
}
