// Package admincli is `keygate admin`, a command-line client of the operator
// API. It talks HTTP to the admin listener and nothing else (no store, no
// front), so it runs on any machine that can reach that listener, and what
// it can do is exactly what the API allows.
//
// Exit codes are part of its interface, for shell scripts: see the Exit*
// constants.
package admincli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// Exit codes of `keygate admin`.
const (
	ExitOK = 0
	// ExitRefused: the operator API answered with an error (4xx other
	// than 401, or 5xx); its message is printed.
	ExitRefused = 1
	// ExitUsage: an unknown command or flag, a missing argument, a bad
	// flag value or body file; nothing was sent.
	ExitUsage = 2
	// ExitUnreachable: keygate could not be reached (bad URL, connection
	// refused, TLS error, timeout) or what answered is not the operator API.
	ExitUnreachable = 3
	// ExitUnauthorized: no admin token, or the API refused it (401).
	ExitUnauthorized = 4
)

// Environment variables of the client; flags override them.
const (
	EnvURL   = "KEYGATE_ADMIN_URL"
	EnvToken = "KEYGATE_ADMIN_TOKEN"
	// DefaultURL is where keygate serves the operator API by default
	// (KEYGATE_ADMIN_ADDR).
	DefaultURL = "http://127.0.0.1:9091"
)

// Bounds of what the client reads and waits for.
const (
	// DefaultTimeout bounds each request, answer included.
	DefaultTimeout = 30 * time.Second
	// MaxResponse bounds an answer of the API (a list of 100,000
	// organizations is about 35 MB).
	MaxResponse = 64 << 20
	// MaxBodyFile bounds a -f body: the operator API refuses bodies over
	// 1 MiB anyway.
	MaxBodyFile = 1 << 20
	// maxSecretFile bounds a token or password file.
	maxSecretFile = 4096
	// maxArg bounds a positional argument (an id or a key name).
	maxArg = 1024
)

// IO is what a run reads and writes.
type IO struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// Now is the clock for relative times (--expires 720h); nil is
	// time.Now.
	Now func() time.Time
	// Open opens the files of -f, --token-file and --password-file; nil
	// is os.Open.
	Open func(name string) (io.ReadCloser, error)
}

func (o IO) withDefaults() IO {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Stdin == nil {
		o.Stdin = strings.NewReader("")
	}
	if o.Open == nil {
		o.Open = func(name string) (io.ReadCloser, error) { return os.Open(name) }
	}
	return o
}

// exitError ends a run with a code and a message for stderr.
type exitError struct {
	code int
	msg  string
	// usage, when set, is printed after the message.
	usage string
}

func (e *exitError) Error() string { return e.msg }

func usageErr(usage, format string, a ...any) *exitError {
	return &exitError{code: ExitUsage, msg: fmt.Sprintf(format, a...), usage: usage}
}

// Run runs `keygate admin` with args (after "admin") and returns its exit
// code. env holds the environment; messages go to io.Stderr, results to
// io.Stdout.
func Run(ctx context.Context, args []string, env map[string]string, o IO) int {
	o = o.withDefaults()
	err := run(ctx, args, env, o)
	if err == nil {
		return ExitOK
	}
	var ex *exitError
	if !errors.As(err, &ex) {
		ex = &exitError{code: ExitRefused, msg: err.Error()}
	}
	if ex.msg != "" {
		fmt.Fprintln(o.Stderr, "keygate admin: "+ex.msg)
	}
	if ex.usage != "" {
		fmt.Fprint(o.Stderr, ex.usage)
	}
	return ex.code
}

func run(ctx context.Context, args []string, env map[string]string, o IO) error {
	inv, err := prepare(args, env, o)
	if err != nil || inv == nil {
		return err
	}
	return execute(ctx, inv, o)
}

// prepare reads the command line into the request to send; a nil
// invocation without an error means help was printed. It sends nothing.
func prepare(args []string, env map[string]string, o IO) (*invocation, error) {
	g := newGlobals(env)
	fs := flag.NewFlagSet("admin", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	g.register(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(o.Stdout, mainUsage())
			return nil, nil
		}
		return nil, usageErr(mainUsage(), "%v", err)
	}
	rest := fs.Args()
	if len(rest) == 0 {
		return nil, usageErr(mainUsage(), "no command given")
	}
	if rest[0] == "help" {
		if len(rest) > 1 {
			if cmds := byResource(rest[1]); len(cmds) > 0 {
				fmt.Fprint(o.Stdout, resourceUsage(rest[1]))
				return nil, nil
			}
		}
		fmt.Fprint(o.Stdout, mainUsage())
		return nil, nil
	}
	cmds := byResource(rest[0])
	if len(cmds) == 0 {
		return nil, usageErr(mainUsage(), "unknown command %q", rest[0])
	}
	c, argv, err := pick(cmds, rest)
	if err != nil {
		return nil, err
	}
	if c == nil {
		fmt.Fprint(o.Stdout, resourceUsage(rest[0]))
		return nil, nil
	}
	inv, err := parse(c, g, argv, o)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(o.Stdout, c.usage())
		return nil, nil
	}
	return inv, err
}

// pick finds the command of rest (resource, verb, arguments…) among the
// resource's commands; nil without an error asks for the resource's usage.
func pick(cmds []*command, rest []string) (*command, []string, error) {
	if len(cmds) == 1 && cmds[0].verb == "" {
		return cmds[0], rest[1:], nil
	}
	resource := rest[0]
	if len(rest) == 1 {
		return nil, nil, usageErr(resourceUsage(resource), "%s: which operation?", resource)
	}
	switch rest[1] {
	case "help", "-h", "--help":
		return nil, nil, nil
	}
	if c := lookup(resource, rest[1]); c != nil {
		return c, rest[2:], nil
	}
	if hint, ok := missing[resource+" "+rest[1]]; ok {
		return nil, nil, usageErr("", "%s %s: %s", resource, rest[1], hint)
	}
	return nil, nil, usageErr(resourceUsage(resource), "unknown command %q", resource+" "+rest[1])
}

// globals are the flags every command takes.
type globals struct {
	output    string
	url       string
	tokenFile string
	timeout   time.Duration
	env       map[string]string
}

func newGlobals(env map[string]string) *globals {
	return &globals{output: "table", timeout: DefaultTimeout, env: env}
}

// register adds the global flags to fs, defaulting to what an earlier
// parse set, so they may come before the command or after it.
func (g *globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.output, "o", g.output, "output: table or json (the API's JSON, for scripts)")
	fs.StringVar(&g.url, "url", g.url, "operator API URL (default $"+EnvURL+", else "+DefaultURL+")")
	fs.StringVar(&g.tokenFile, "token-file", g.tokenFile, `read the admin token from this file ("-" = stdin) instead of $`+EnvToken)
	fs.DurationVar(&g.timeout, "timeout", g.timeout, "timeout of each request")
}

const globalFlags = `global flags (before or after the command):
  -o table|json      output: aligned tables (default) or the API's JSON, for scripts
  --url URL          operator API (default $KEYGATE_ADMIN_URL, else http://127.0.0.1:9091)
  --token-file FILE  read the admin token from FILE ("-" = stdin) instead of $KEYGATE_ADMIN_TOKEN
  --timeout D        timeout of each request (default 30s)

exit codes: 0 ok, 1 the API refused (its message is printed), 2 usage error,
3 keygate unreachable (URL, connection, TLS, timeout), 4 admin token missing or refused
`

func mainUsage() string {
	var b strings.Builder
	b.WriteString("usage: keygate admin [flags] <resource> <operation> [arguments] [flags]\n\n")
	b.WriteString("A client of the operator API (docs/cli.md). Commands:\n")
	for _, c := range commands {
		fmt.Fprintf(&b, "  %-30s %s\n", c.synopsis(), c.summary)
	}
	b.WriteString("\n" + globalFlags)
	b.WriteString("\nkeygate admin <resource> <operation> -h shows the flags of one command.\n")
	return b.String()
}

func resourceUsage(resource string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "usage: keygate admin %s <operation> [arguments] [flags]\n\n", resource)
	for _, c := range byResource(resource) {
		fmt.Fprintf(&b, "  %-30s %s\n", c.synopsis(), c.summary)
	}
	b.WriteString("\nkeygate admin " + resource + " <operation> -h shows its flags.\n")
	return b.String()
}
