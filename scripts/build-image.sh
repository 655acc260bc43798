#!/usr/bin/env bash
# Build the chat binary (static, CGO_ENABLED=0) and the scratch image around it.
#
#   scripts/build-image.sh              # image chat:latest
#   CHAT_IMAGE=chat:dev scripts/build-image.sh
#
# Nothing is pulled: the Dockerfile is FROM scratch and the binary is built
# here, on the host, by the Go toolchain (which may fetch Go modules).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
image=${CHAT_IMAGE:-chat:latest}

command -v go >/dev/null || { echo "build-image: go is not installed: https://go.dev/dl/" >&2; exit 1; }
command -v docker >/dev/null || { echo "build-image: docker is not installed" >&2; exit 1; }

# The build context holds only what the image needs, so nothing else of the
# work tree is sent to the engine.
ctx=$(mktemp -d "${TMPDIR:-/tmp}/chat-image.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
mkdir "$ctx/data"

echo "build-image: go build (CGO_ENABLED=0)" >&2
(cd "$root" && CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags='-s -w' -o "$ctx/chat" .)

echo "build-image: docker build -t $image" >&2
old=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
# -q: print only the image id, or the errors. BuildKit is used where buildx
# is installed, the classic builder elsewhere (its deprecation notice is noise).
if ! out=$(docker build -q -t "$image" -f "$root/Dockerfile" "$ctx" 2>&1); then
	echo "$out" >&2
	echo "build-image: docker build failed" >&2
	exit 1
fi

# The image this tag named before is garbage now, unless a container uses it.
new=$(docker image inspect -f '{{.Id}}' "$image")
if [[ -n $old && $old != "$new" ]]; then
	docker rmi "$old" >/dev/null 2>&1 || true
fi

bin=$(stat -c %s "$ctx/chat")
img=$(docker image inspect -f '{{.Size}}' "$image")
awk -v i="$image" -v a="$img" -v b="$bin" \
	'BEGIN { printf "build-image: %s ready: image %.1f MB, binary %.1f MB\n", i, a/1e6, b/1e6 }' >&2
