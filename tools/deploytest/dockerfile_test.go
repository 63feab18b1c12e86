package deploytest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/client/llb/sourceresolver"
	"github.com/moby/buildkit/frontend/dockerfile/dockerfile2llb"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/subrequests/lint"
	"github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
)

// localImages answers BuildKit's base-image lookups from a table instead of a
// registry, so the linter runs without a network. It records what was asked.
type localImages struct {
	mu     sync.Mutex
	asked  []string
	images map[string]ocispecs.ImageConfig
}

func (l *localImages) ResolveImageConfig(_ context.Context, ref string, opt sourceresolver.Opt) (string, digest.Digest, []byte, error) {
	l.mu.Lock()
	l.asked = append(l.asked, ref)
	l.mu.Unlock()
	cfg, ok := l.images[ref]
	if !ok {
		return "", "", nil, fmt.Errorf("base image %q is not one the Dockerfile should use", ref)
	}
	platform := ocispecs.Platform{OS: "linux", Architecture: "amd64"}
	if opt.ImageOpt != nil && opt.ImageOpt.Platform != nil {
		platform = *opt.ImageOpt.Platform
	}
	dt, err := json.Marshal(ocispecs.Image{Platform: platform, Config: cfg, RootFS: ocispecs.RootFS{Type: "layers"}})
	if err != nil {
		return "", "", nil, err
	}
	return ref, digest.FromBytes(dt), dt, nil
}

func (l *localImages) refs() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.asked)
}

// TestDockerfileLint runs BuildKit's own Dockerfile linter (what `docker build
// --check` runs) with every rule, then checks the build itself: a static
// binary, a non-root user, a distroless final stage.
func TestDockerfileLint(t *testing.T) {
	path := filepath.Join(repoRoot, "Dockerfile")
	dt, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	images := testImages()
	res := lintDockerfile(t, dt, images)
	if res.Error != nil {
		t.Fatalf("Dockerfile does not convert: %s", res.Error.Message)
	}
	for _, w := range res.Warnings {
		line := 0
		if w.Location != nil && len(w.Location.Ranges) > 0 {
			line = int(w.Location.Ranges[0].Start.Line)
		}
		t.Errorf("Dockerfile:%d: %s: %s (%s)", line, w.RuleName, w.Detail, w.URL)
	}
	if asked := images.refs(); len(asked) != 2 {
		t.Errorf("base images resolved: %v, want golang:1.26 and distroless", asked)
	}

	checkDockerfile(t, dt)
}

// checkDockerfile reads the parsed stages and asserts what the image must be.
func checkDockerfile(t *testing.T, dt []byte) {
	t.Helper()
	ast, err := parser.Parse(bytes.NewReader(dt))
	if err != nil {
		t.Fatal(err)
	}
	stages, _, err := instructions.Parse(ast.AST, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(stages) != 2 {
		t.Fatalf("%d stages, want a builder and a final stage", len(stages))
	}
	build, final := stages[0], stages[len(stages)-1]
	if !strings.HasPrefix(build.BaseName, "golang:1.26") {
		t.Errorf("builder FROM %s, want golang:1.26", build.BaseName)
	}
	if !strings.HasPrefix(final.BaseName, "gcr.io/distroless/static") || !strings.HasSuffix(final.BaseName, ":nonroot") {
		t.Errorf("final FROM %s, want gcr.io/distroless/static…:nonroot", final.BaseName)
	}

	var runs []string
	modDownloadBeforeCopyAll := false
	copiedAll := false
	for _, cmd := range build.Commands {
		switch c := cmd.(type) {
		case *instructions.RunCommand:
			line := strings.Join(c.CmdLine, " ")
			runs = append(runs, line)
			if strings.Contains(line, "go mod download") && !copiedAll {
				modDownloadBeforeCopyAll = true
			}
		case *instructions.CopyCommand:
			if slices.Contains(c.SourcePaths, ".") {
				copiedAll = true
			}
		}
	}
	if !modDownloadBeforeCopyAll {
		t.Error("no `go mod download` layer before the source is copied")
	}
	goBuild := regexp.MustCompile(`\bgo build\b`)
	var buildLine string
	for _, r := range runs {
		if goBuild.MatchString(r) {
			buildLine = r
		}
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", `-ldflags "-s -w"`, "-o /keygate", "./cmd/keygate"} {
		if !strings.Contains(buildLine, want) {
			t.Errorf("go build line %q lacks %s", buildLine, want)
		}
	}

	var user string
	var entrypoint, cmdArgs []string
	var exposed []string
	for _, cmd := range final.Commands {
		switch c := cmd.(type) {
		case *instructions.UserCommand:
			user = c.User
		case *instructions.EntrypointCommand:
			entrypoint = c.CmdLine
			if c.PrependShell {
				t.Error("ENTRYPOINT in shell form: distroless has no shell")
			}
		case *instructions.CmdCommand:
			cmdArgs = c.CmdLine
		case *instructions.ExposeCommand:
			exposed = append(exposed, c.Ports...)
		case *instructions.RunCommand:
			t.Errorf("RUN in the final stage (%s): distroless has no shell", strings.Join(c.CmdLine, " "))
		}
	}
	if uid, _, _ := strings.Cut(user, ":"); uid != "65532" && uid != "nonroot" {
		t.Errorf("final USER %q, want non-root 65532", user)
	}
	if !slices.Equal(entrypoint, []string{"/keygate"}) || !slices.Equal(cmdArgs, []string{"serve"}) {
		t.Errorf("ENTRYPOINT %q CMD %q, want [/keygate] [serve]", entrypoint, cmdArgs)
	}
	slices.Sort(exposed)
	if !slices.Equal(exposed, []string{"8000", "9090"}) {
		t.Errorf("EXPOSE %v, want 8000 9090", exposed)
	}
}

func testImages() *localImages {
	return &localImages{images: map[string]ocispecs.ImageConfig{
		"docker.io/library/golang:1.26":             {Env: []string{"PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "GOLANG_VERSION=1.26.0", "GOPATH=/go"}, WorkingDir: "/go"},
		"gcr.io/distroless/static-debian12:nonroot": {Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"}, User: "65532", WorkingDir: "/home/nonroot"},
	}}
}

// lintDockerfile runs dockerfile2llb.DockerfileLint as the BuildKit frontend
// does for a lint subrequest, with base images resolved by images.
func lintDockerfile(t *testing.T, dt []byte, images *localImages) *lint.LintResults {
	t.Helper()
	ctx := context.Background()
	src := llb.Local("dockerfile")
	def, err := src.Marshal(ctx)
	if err != nil {
		t.Fatal(err)
	}
	smap := llb.NewSourceMap(&src, "Dockerfile", "Dockerfile", dt)
	smap.Definition = def
	res, err := dockerfile2llb.DockerfileLint(ctx, dt, dockerfile2llb.ConvertOpt{
		SourceMap:      smap,
		MetaResolver:   images,
		TargetPlatform: &ocispecs.Platform{OS: "linux", Architecture: "amd64"},
	})
	if err != nil {
		t.Fatalf("lint: %v", err)
	}
	return res
}

// TestDockerfileLintCatches proves the linter is wired up: Dockerfiles with
// known faults must produce the matching rule (or a conversion error).
func TestDockerfileLintCatches(t *testing.T) {
	tests := []struct {
		name, dockerfile, want string
	}{
		{"shell-form entrypoint", "FROM gcr.io/distroless/static-debian12:nonroot\nENTRYPOINT /keygate\n", "JSONArgsRecommended"},
		{"stage name casing", "FROM golang:1.26 AS Build\nRUN true\nFROM gcr.io/distroless/static-debian12:nonroot\nCOPY --from=Build /x /x\n", "StageNameCasing"},
		{"from-as casing", "FROM golang:1.26 as build\nRUN true\n", "FromAsCasing"},
		{"undefined variable", "FROM golang:1.26\nRUN echo $NOPE_NOT_SET\nENV X=$ALSO_NOT_SET\n", "UndefinedVar"},
		{"unknown base image", "FROM docker.io/library/alpine:3\n", "build error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := lintDockerfile(t, []byte(tt.dockerfile), testImages())
			var got []string
			for _, w := range res.Warnings {
				got = append(got, w.RuleName)
			}
			if res.Error != nil {
				got = append(got, "build error")
			}
			if !slices.Contains(got, tt.want) {
				t.Errorf("findings %v, want %s", got, tt.want)
			}
		})
	}
}
