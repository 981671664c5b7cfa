// deploycheck validates Parley's deployment files offline, where no Docker engine or
// Kubernetes cluster can run them:
//
//   - docker-compose.yml is loaded by compose-go (the library the docker compose CLI uses),
//     which checks it against the Compose specification's schema and resolves it;
//   - every kustomize target (the base and each overlay) is built with the kustomize API, and
//     every object it renders is decoded strictly into the official k8s.io/api types: an
//     unknown field, a duplicate field or a wrong type is an error;
//   - then a few rules of our own (probes, resources, the gateway's autoscaler and grace
//     period) that the types cannot express.
//
// Usage: deploycheck <repo root>
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

func checkCompose(root string) error {
	file := filepath.Join(root, "docker-compose.yml")
	env := map[string]string{}
	project, err := loader.LoadWithContext(context.Background(), types.ConfigDetails{
		WorkingDir:  root,
		ConfigFiles: []types.ConfigFile{{Filename: file}},
		Environment: env,
	}, func(o *loader.Options) {
		o.SetProjectName("parley", true)
	})
	if err != nil {
		return fmt.Errorf("docker-compose.yml: %w", err)
	}
	want := []string{"kafka", "kafka-init", "redis", "mongo", "keys", "auth", "store", "router", "gateway", "edge"}
	for _, name := range want {
		svc, ok := project.Services[name]
		if !ok {
			return fmt.Errorf("docker-compose.yml: service %q is missing", name)
		}
		if name == "gateway" && (svc.ContainerName != "" || len(svc.Ports) > 0) {
			return fmt.Errorf("docker-compose.yml: gateway must have no container name and no host port, or it cannot be scaled")
		}
	}
	fmt.Printf("compose: docker-compose.yml is valid (%d services, %d volumes)\n", len(project.Services), len(project.Volumes))
	return nil
}

func newDecoder() (runtime.Decoder, error) {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, appsv1.AddToScheme, autoscalingv2.AddToScheme,
		policyv1.AddToScheme, networkingv1.AddToScheme,
	} {
		if err := add(scheme); err != nil {
			return nil, err
		}
	}
	return json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme, scheme,
		json.SerializerOptions{Yaml: true, Strict: true}), nil
}

func checkDeployment(d *appsv1.Deployment) error {
	spec := d.Spec.Template.Spec
	for _, c := range spec.Containers {
		if c.ReadinessProbe == nil || c.LivenessProbe == nil {
			return fmt.Errorf("deployment %s: container %s needs readiness and liveness probes", d.Name, c.Name)
		}
		if c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" ||
			c.LivenessProbe.HTTPGet == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" {
			return fmt.Errorf("deployment %s: probes must be /readyz and /healthz", d.Name)
		}
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Limits.Memory().IsZero() {
			return fmt.Errorf("deployment %s: container %s needs requests and limits", d.Name, c.Name)
		}
	}
	// The gateway drains in at most 10 s (PARLEY: SIGTERM, 1001 to every socket, producer
	// flushed); Kubernetes must wait longer than that before SIGKILL.
	if d.Name == "gateway" && (spec.TerminationGracePeriodSeconds == nil || *spec.TerminationGracePeriodSeconds <= 10) {
		return fmt.Errorf("deployment gateway: terminationGracePeriodSeconds must exceed the 10 s drain")
	}
	return nil
}

func checkKustomize(root, dir string, dec runtime.Decoder) error {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return fmt.Errorf("%s: kustomize: %w", dir, err)
	}
	kinds := map[string]int{}
	hpaTarget := ""
	for _, r := range m.Resources() {
		y, err := r.AsYAML()
		if err != nil {
			return err
		}
		obj, gvk, err := dec.Decode(y, nil, nil)
		if err != nil {
			return fmt.Errorf("%s: %s %s: %w", dir, r.GetKind(), r.GetName(), err)
		}
		kinds[gvk.Kind]++
		switch o := obj.(type) {
		case *appsv1.Deployment:
			if err := checkDeployment(o); err != nil {
				return fmt.Errorf("%s: %w", dir, err)
			}
		case *autoscalingv2.HorizontalPodAutoscaler:
			hpaTarget = o.Spec.ScaleTargetRef.Kind + "/" + o.Spec.ScaleTargetRef.Name
		}
	}
	if hpaTarget != "Deployment/gateway" {
		return fmt.Errorf("%s: no HorizontalPodAutoscaler on the gateway Deployment", dir)
	}
	rel, _ := filepath.Rel(root, dir)
	var parts []string
	for _, kind := range []string{"Namespace", "ConfigMap", "Secret", "Service", "Deployment",
		"HorizontalPodAutoscaler", "PodDisruptionBudget", "Ingress"} {
		parts = append(parts, fmt.Sprintf("%s=%d", kind, kinds[kind]))
	}
	fmt.Printf("kubernetes: %s renders %d objects, all valid (%s)\n", rel, len(m.Resources()), strings.Join(parts, " "))
	return nil
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: deploycheck <repo root>")
		os.Exit(2)
	}
	root, _ := filepath.Abs(os.Args[1])
	dec, err := newDecoder()
	if err == nil {
		err = checkCompose(root)
	}
	for _, d := range []string{"deploy/k8s/base", "deploy/k8s/overlays/dev", "deploy/k8s/overlays/prod"} {
		if err == nil {
			err = checkKustomize(root, filepath.Join(root, d), dec)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "deploycheck:", err)
		os.Exit(1)
	}
}
