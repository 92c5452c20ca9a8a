# Disk layout of the aarch64 appliance (Raspberry Pi 4/5 and other boards booting with extlinux) as the
# sd-card image lays it out, so that `nixos-rebuild switch --flake .#appliance-aarch64` on a running
# board keeps booting. Defaults only: the sd-card image builder sets the same values itself.
{ lib, ... }:

{
  fileSystems."/" = lib.mkDefault {
    device = "/dev/disk/by-label/NIXOS_SD";
    fsType = "ext4";
  };
  boot.loader.grub.enable = false;
  boot.loader.generic-extlinux-compatible.enable = lib.mkDefault true;
}
