# The chat image: the static (CGO_ENABLED=0) binary alone, run as a non-root
# user. Nothing is pulled: there is no base image and no build stage, so it
# builds where no registry can be reached.
#
# Build it with scripts/build-image.sh, which compiles the binary and hands
# `docker build` a context holding only what this file copies:
#   chat    the binary
#   data/   an empty directory: the servers' shared data directory
#
# /data belongs to the image's user so that a fresh named volume mounted there
# (it takes the owner and mode of the image's directory) is writable by it.
FROM scratch

COPY --chown=10001:10001 data/ /data/
COPY chat /chat

# No shell, no /etc/passwd: a numeric user is the only kind scratch can run.
USER 10001:10001
ENV CHAT_DATA=/data

LABEL org.opencontainers.image.title="chat" \
      org.opencontainers.image.description="A fault-tolerant ZeroMQ chat system: every role in one static binary"

ENTRYPOINT ["/chat"]
CMD ["--help"]
