#!/usr/bin/env bash
# The SMTP server the mail tests start themselves: aiosmtpd (PyPI) for python3. Installs python3
# from Debian's packages and aiosmtpd with pip if either is missing; exits non-zero if it still
# cannot be imported (CI must not skip the mail tests).
set -uo pipefail

if python3 -c 'import aiosmtpd' 2>/dev/null; then
  echo "  aiosmtpd $(python3 -c 'import aiosmtpd; print(aiosmtpd.__version__)') present"
  exit 0
fi
if ! command -v python3 >/dev/null || ! python3 -m pip --version >/dev/null 2>&1; then
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-pip >/dev/null
fi
echo "  installing aiosmtpd"
python3 -m pip install -q aiosmtpd 2>/dev/null || python3 -m pip install -q --break-system-packages aiosmtpd
if python3 -c 'import aiosmtpd' 2>/dev/null; then
  echo "  aiosmtpd installed"
else
  echo "  aiosmtpd STILL MISSING"
  exit 1
fi
