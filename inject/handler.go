package inject

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"go.uber.org/zap"
	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// maxReviewBytes bounds a request body. The API server caps objects at about
// 3 MiB; a review carries the object once (oldObject is empty on CREATE).
const maxReviewBytes = 4 << 20

// NewHandler returns the webhook's HTTP handler: POST /mutate answers an
// AdmissionReview v1, GET /healthz answers 200 for the injector's own probes.
func NewHandler(cfg Config, log *zap.Logger) http.Handler {
	if log == nil {
		log = zap.NewNop()
	}
	h := &handler{cfg: cfg, log: log}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /mutate", h.mutate)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
	return mux
}

type handler struct {
	cfg Config
	log *zap.Logger
}

// mutate answers 400 only when no AdmissionReview can be answered (no UID to
// echo); every problem with the pod itself is a denial inside a well-formed
// review, so the API server shows the message to the user.
func (h *handler) mutate(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxReviewBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			http.Error(w, fmt.Sprintf("admission review larger than %d bytes", tooBig.Limit), http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(w, "read admission review: "+err.Error(), http.StatusBadRequest)
		return
	}
	review, err := decodeReview(body)
	if err != nil {
		h.log.Warn("bad admission review", zap.Error(err), zap.String("remote", r.RemoteAddr))
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	req := review.Request
	resp := &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}
	ops, err := Mutate(h.cfg, req)
	switch {
	case err != nil:
		resp.Allowed = false
		resp.Result = &metav1.Status{
			Status:  metav1.StatusFailure,
			Code:    http.StatusBadRequest,
			Reason:  metav1.StatusReasonBadRequest,
			Message: "keygate injector: " + err.Error(),
		}
		h.log.Info("pod refused", zap.String("namespace", req.Namespace), zap.String("name", podName(req)), zap.Error(err))
	case len(ops) > 0:
		patch, merr := json.Marshal(ops)
		if merr != nil {
			// Only values built by Mutate are marshalled; this cannot fail
			// short of a bug, and then refusing is the safe answer.
			resp.Allowed = false
			resp.Result = &metav1.Status{Status: metav1.StatusFailure, Code: http.StatusInternalServerError, Message: "keygate injector: encode patch: " + merr.Error()}
			break
		}
		pt := admissionv1.PatchTypeJSONPatch
		resp.Patch, resp.PatchType = patch, &pt
		h.log.Info("sidecar injected", zap.String("namespace", req.Namespace), zap.String("name", podName(req)), zap.Bool("dry_run", req.DryRun != nil && *req.DryRun))
	}
	out, err := json.Marshal(admissionv1.AdmissionReview{TypeMeta: review.TypeMeta, Response: resp})
	if err != nil {
		http.Error(w, "encode admission review: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if _, err := w.Write(out); err != nil {
		h.log.Debug("write admission response", zap.Error(err))
	}
}

// decodeReview accepts only an AdmissionReview v1 with a request and a UID.
func decodeReview(body []byte) (*admissionv1.AdmissionReview, error) {
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil {
		return nil, fmt.Errorf("not an AdmissionReview: %w", err)
	}
	if gv := admissionv1.SchemeGroupVersion.String(); review.APIVersion != gv || review.Kind != "AdmissionReview" {
		return nil, fmt.Errorf("not an AdmissionReview %s: apiVersion %q, kind %q", gv, review.APIVersion, review.Kind)
	}
	if review.Request == nil {
		return nil, errors.New("AdmissionReview has no request")
	}
	if review.Request.UID == "" {
		return nil, errors.New("AdmissionReview request has no uid")
	}
	return &review, nil
}

// podName is for logs: pods made by controllers have only generateName at
// admission time.
func podName(req *admissionv1.AdmissionRequest) string {
	if req.Name != "" {
		return req.Name
	}
	var meta struct {
		Metadata struct {
			GenerateName string `json:"generateName"`
		} `json:"metadata"`
	}
	if json.Unmarshal(req.Object.Raw, &meta) == nil && meta.Metadata.GenerateName != "" {
		return meta.Metadata.GenerateName + "*"
	}
	return ""
}
